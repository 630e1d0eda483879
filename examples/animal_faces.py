"""Train a convolutional VAE on Animal Faces (AFHQ) with fastvae's library API.

    python examples/animal_faces.py --data-dir /path/to/afhq --image-size 64 --classes cat

The folder holds AFHQ's train/{cat,dog,wild} and val/{cat,dog,wild} (see
fastvae.animal_faces for how to get it). The command line does the same with a run folder:
`fastvae train --dataset animal-faces --model conv --data-dir /path/to/afhq`.
"""

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from fastvae import ConvVAE
from fastvae.animal_faces import load_animal_faces
from fastvae.data import ImageBatches

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
batches = ImageBatches(*train, batch_size=32, shuffle=True)
model = ConvVAE((3, args.image_size, args.image_size), latent_dim=128, likelihood="mse").to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(1, args.epochs + 1):
    model.train()
    for x, _ in batches:
        loss = model.loss(x).loss  # squared error + KL, per image (batch mean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        x_val = val.images.float() / 255
        print(f"epoch {epoch}: val loss {model.loss(x_val).loss.item():.1f} per image")

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
save_image(model.sample(16).clamp(0, 1), args.out, nrow=4)
print(f"wrote {args.out}")
