"""Trading rules: plug-ins on ``engine.strategy.Rule`` that turn session features into target exposures."""
