"""The ``tailsynth`` command: inspect prepared data, sample from a generator, print the summary."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="tailsynth: generative augmentation for long-tailed and few-shot classification.")


@app.command()
def classes(folder: Path = typer.Argument(Path("data/prepared/digits"), help="a prepared dataset folder")) -> None:
    """Print each class's train count and shot bucket."""
    from tailsynth.data.manifest import read_classes

    for c in read_classes(folder):
        typer.echo(f"{c['index']:4d}  {c['name']:<24} {c['train_count']:6d}  {c['bucket']}")


@app.command()
def sample(
    prompt: str = typer.Argument(..., help="text prompt, e.g. 'a photo of a three'"),
    out: Path = typer.Option(Path("samples.png"), help="PNG grid to write"),
    generator: str = typer.Option("models/generator", help="diffusers folder or hub id"),
    n: int = typer.Option(8, help="number of images"),
    steps: int = typer.Option(25),
    cfg: float = typer.Option(5.0),
    seed: int = typer.Option(0),
) -> None:
    """Generate ``n`` images for ``prompt`` (seeds seed..seed+n-1) and save them as a grid."""
    import torch

    from tailsynth.errors import TailsynthError
    from tailsynth.models.generator import load_pipeline
    from tailsynth.report.grid import save_class_grid
    from tailsynth.synth.sampler import LatentDiffusionSampler

    try:
        sampler = LatentDiffusionSampler(load_pipeline(generator))
    except TailsynthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    images = sampler.generate([prompt] * n, list(range(seed, seed + n)), steps=steps, cfg=cfg)
    save_class_grid(images, torch.zeros(n, dtype=torch.long), out, per_row=n)
    typer.echo(f"wrote {out}")


@app.command()
def summary(path: Path = typer.Argument(Path("metrics/summary.md"))) -> None:
    """Print the comparison table written by the report stage."""
    if not path.is_file():
        typer.echo(f"error: {path} not found; run `dvc repro` first", err=True)
        raise typer.Exit(2)
    typer.echo(path.read_text())


if __name__ == "__main__":
    app()
