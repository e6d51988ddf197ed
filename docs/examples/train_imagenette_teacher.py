"""Train a teacher outside kdnas, save its state dict, and let a study use it through an import path.

The teacher is torchvision's ResNet-18 (``torchvision.models:resnet18`` with ``num_classes = 10``),
trained from scratch on Imagenette at the study's image size; ``studies/imagenette.toml`` points its
``[teacher]`` at the saved file (docs/real-data.md):

    mkdir -p data/imagenette112 && tar -xf ../shared/data/imagenette112.tar -C data/imagenette112
    python docs/examples/train_imagenette_teacher.py --data-dir data --out data/imagenette-resnet18.pt
    python -m kdnas.search --study imagenette --data-dir data

Any training code does; this one borrows kdnas's data loading and training loop (seeded augmentation,
bfloat16 where the CPU has it) so that it is short and fast on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision

from kdnas.config import DataConfig, TrainRecipe
from kdnas.data import AugmentedViews, load_data
from kdnas.files import atomic_write
from kdnas.progress import percent
from kdnas.trainer import evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--path", default="imagenette112", help="the image folder, under --data-dir")
    parser.add_argument("--image-size", type=int, default=64, help="as the study's [data] image_size")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("data/imagenette-resnet18.pt"))
    args = parser.parse_args()

    torch.manual_seed(0)
    data = load_data(DataConfig(dataset="imagefolder", path=args.path, image_size=args.image_size), args.data_dir)
    model = torchvision.models.resnet18(num_classes=data.info.num_classes)
    recipe = TrainRecipe(epochs=args.epochs, batch_size=128, lr=0.2, label_smoothing=0.1, warmup_epochs=1.0)
    result = fit(
        model,
        AugmentedViews(data),
        recipe,
        on_epoch=lambda epoch, accuracy: print(f"epoch {epoch + 1}/{args.epochs}: val accuracy {percent(accuracy)}"),
    )
    val = evaluate(model, data.val, data.info, recipe.eval_batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: torch.save(model.state_dict(), tmp))
    print(
        f"resnet18: val accuracy {percent(val)} after {args.epochs} epochs in {result.seconds:.0f} s; saved {args.out}"
    )


if __name__ == "__main__":
    main()
