"""python -m toybigram.theory run_dir=outputs/train/... [quick=true variant=diagonal families=[hijack]]"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from toybigram.theory import config as _config  # noqa: F401  (registers the structured config)
from toybigram.errors import ConfigError, UserError
from toybigram.theory.prompts import FAMILIES
from toybigram.theory.strengths import VARIANTS


def precheck(cfg: DictConfig) -> None:
    if not cfg.run_dir:
        raise ConfigError("run_dir: required (a training run directory holding checkpoint.pt)")
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run_dir: no run directory at {run_dir}")
    if not (run_dir / "checkpoint.pt").is_file():
        raise UserError(f"run_dir: no checkpoint.pt in {run_dir}")
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"variant: unknown value {cfg.variant!r} (choose {', '.join(VARIANTS)})")
    for family in cfg.families:
        if family not in FAMILIES:
            raise ConfigError(f"families: unknown family {family!r} (choose {', '.join(FAMILIES)})")
    from toybigram.build import resolve_device

    resolve_device(cfg.device)


def task(cfg: DictConfig) -> dict:
    from toybigram.build import resolve_device
    from toybigram.checkpoint import load_run
    from toybigram.theory.compare import analyze_run

    model, train_cfg = load_run(cfg.run_dir, resolve_device(cfg.device))
    head = analyze_run(cfg.run_dir, model, train_cfg, quick=cfg.quick, variant=cfg.variant, seed=cfg.seed,
                       families=list(cfg.families), plots=cfg.plots)
    print(headline(head, Path(cfg.run_dir)))
    return head


def headline(head: dict, run_dir: Path) -> str:
    line = f"theory: top-1 agreement {head['top1_agreement']:.3f}  centred-logit R^2 {head['r2_centered_logits']:.3f}"
    if "hijack_top1_agreement" in head:
        line += (f"  | hijack top-1 {head['hijack_top1_agreement']:.3f}  R^2 {head['hijack_r2_centered_logits']:.3f}"
                 f"  threshold within one {head['hijack_threshold_within_one']:.2f}")
    return line + f"  ({run_dir / 'theory.json'})"


def main() -> None:
    from toybigram.cli import run_app

    run_app(task, "theory", precheck)


if __name__ == "__main__":
    main()
