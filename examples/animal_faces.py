"""Train a convolutional VAE on Animal Faces (AFHQ) with fastvae's library API.

    python examples/animal_faces.py --data-dir /path/to/afhq --image-size 64 --classes cat

The folder holds AFHQ's train/{cat,dog,wild} and val/{cat,dog,wild} (see
fastvae/data/animal_faces.py for how to get it). The step is the one `fastvae train` runs
(fastvae.train.Engine); the command line does the same with a run folder:
`fastvae train --dataset animal-faces --model conv --data-dir /path/to/afhq`.
"""

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from fastvae import ConvVAE
from fastvae.data import ImageBatches, ShardedImageBatches, load_animal_faces
from fastvae.train import Engine, evaluate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", required=True, help="the AFHQ folder (train/ and val/)")
parser.add_argument("--image-size", type=int, default=64)
parser.add_argument("--classes", nargs="+", default=None, help="e.g. cat (default: all)")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--out", default="runs/examples/afhq_samples.png", help="PNG grid of samples")
args = parser.parse_args()

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"  # Triton kernels on CUDA
kw = dict(image_size=args.image_size, classes=args.classes, device=device)
train, _ = load_animal_faces(True, args.data_dir, **kw)  # uint8 (N, 3, S, S) on the device
val, _ = load_animal_faces(False, args.data_dir, **kw)
batches = ShardedImageBatches(*train, 32)  # shuffled per epoch
val_batches = ImageBatches(*val, 32, shuffle=False)
model = ConvVAE((3, args.image_size, args.image_size), latent_dim=128, likelihood="mse").to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True,
                             capturable=device == "cuda")
engine = Engine(model, optimizer, seed=0)

for epoch in range(1, args.epochs + 1):
    losses = engine.train_epoch(epoch, batches)  # squared error + KL, per image
    val_loss = evaluate(model, val_batches)["loss"]
    print(f"epoch {epoch}: train loss {losses.loss:.1f}, val loss {val_loss:.1f} per image")

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
save_image(model.eval().sample(16).clamp(0, 1), args.out, nrow=4)
print(f"wrote {args.out}")
