"""Task-adaptive pretraining (Gururangan et al. 2020), tried once for the sentiment issue and not made a recipe:
masked-LM training of the packaged all-MiniLM-L6-v2 on the Financial PhraseBank training split's own sentences
(3,868, their labels unused; no validation or test sentence), 150 steps of the fresh masked-LM head alone, then
600 full steps of 64 sentences (about ten passes), with signals/pretrain.py's loop; then the default fine-tuning
(signals/finetune.py) from that encoder, with the seeds given. Figures: README, *Measured figures*.

    .venv/bin/python bench/tapt.py --out FOLDER [--seeds 0,1,2]

FOLDER gets encoder/ (the adapted encoder and tapt.json: its masked-LM history and time) and model/ (the
fine-tuned model and its card). About 15 minutes of pretraining and 5 per seed on 2 idle cores.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from engine.cache import write_folder_atomic
from engine.errors import ConfigError, DataError, NewsbtError, OneLineParser
from signals import finetune
from signals.pretrain import PretrainSettings, pretrain

SETTINGS = PretrainSettings(steps=600, head_steps=150, eval_texts=256)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="bench/tapt.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=finetune._seed_list, default=[0])
    args = parser.parse_args(argv)
    try:
        source = finetune.find_phrasebank()
        unique, _ = finetune.dedupe_phrasebank(finetune.read_phrasebank(source / finetune.TRAIN_FILE))
        parts = finetune.split_phrasebank(unique)
        texts = list(parts["train"]["sentence"])
        scored = set(parts["validation"]["sentence"]) | set(parts["test"]["sentence"])
        if scored & set(texts):
            raise DataError(f"{source / finetune.TRAIN_FILE}: a validation or test sentence is in the training split")
        encoder, model = args.out / "encoder", args.out / "model"
        # Checked before the pretraining's quarter of an hour: only folders this script wrote are replaced.
        if encoder.exists() and not (encoder / "tapt.json").is_file():
            raise ConfigError(f"{encoder}: exists and was not written by bench/tapt.py; choose another --out")
        finetune.check_out_folder(model)
        started, cpu_started = time.perf_counter(), time.process_time()
        mlm, tokenizer, history = pretrain(None, texts, SETTINGS, print)
        card = {"settings": dataclasses.asdict(SETTINGS), "texts": len(texts), "history": history,
                "machine": finetune.machine(), "seconds": round(time.perf_counter() - started, 1),
                "cpu_seconds": round(time.process_time() - cpu_started, 1)}

        def fill(staging: Path) -> None:
            mlm.base_model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / "tapt.json").write_text(json.dumps(card, indent=1))

        write_folder_atomic(fill, encoder, lambda found: (found / "tapt.json").is_file())
        finetune.finetune(model, str(encoder), finetune.RECIPES["default"], "default",
                          progress=False, seeds=args.seeds)
    except NewsbtError as error:
        print(f"newsbt: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
