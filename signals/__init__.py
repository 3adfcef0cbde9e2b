"""Signal providers: plug-ins on ``engine.signal.SignalProvider`` that turn aligned news into session signals."""
