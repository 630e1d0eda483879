"""Train the canonical MNIST VAE (784-400-20, Bernoulli decoder) with fastvae's library API.

    FASTVAE_DATA=/path/to/data python examples/train_mnist.py --epochs 2

MNIST is read from $FASTVAE_DATA/MNIST/raw (default ./data). The step is the one `fastvae train`
runs (fastvae.train.Engine: on CUDA replayed from a CUDA graph); the command line does the
same with a run folder, checkpoints and figures: `fastvae train`.
"""

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from fastvae import MLPVAE
from fastvae.data import ShardedImageBatches, load_mnist, mnist_batches
from fastvae.train import Engine, evaluate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--out", default="runs/examples/mnist_samples.png",
                    help="PNG grid of 64 samples")
args = parser.parse_args()

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"  # Triton kernels on CUDA
train = ShardedImageBatches(*load_mnist(True, device=device), 128)  # shuffled per epoch
test = mnist_batches(False, batch_size=1000, device=device)
model = MLPVAE().to(device)
# fused Adam; capturable on CUDA, so that the engine can replay the step from a CUDA graph
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True,
                             capturable=device == "cuda")
engine = Engine(model, optimizer, seed=0)
print(engine.why)

for epoch in range(1, args.epochs + 1):
    losses = engine.train_epoch(epoch, train)  # negative ELBO, nats per image
    test_nelbo = evaluate(model, test)["loss"]
    print(f"epoch {epoch}: train negative ELBO {losses.loss:.2f}, test {test_nelbo:.2f} "
          "nats per image")

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
save_image(model.eval().sample(64), args.out, nrow=8)
print(f"wrote {args.out}")
