"""FID: the torchmetrics arithmetic against the closed form, feature networks, the classifier."""

import math

import pytest
import torch
from test_data import HAVE_MNIST, NO_MNIST
from torch import nn

from fastvae.studies import fid


class Identity(nn.Module):
    """Features = the flattened image itself."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x.reshape(x.shape[0], -1).double()


def with_moments(mean, cov, n=400, seed=0):
    """n points whose SAMPLE mean and covariance (1/(n-1)) are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, mean.shape[0], generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / (n - 1))).T  # whitened exactly
    return mean + z @ torch.linalg.cholesky(cov).T


def test_fid_matches_the_closed_form_for_two_gaussians():
    # 2x2 covariances that do not commute: Tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    # (for a 2x2 matrix with positive eigenvalues a, b: Tr sqrt = sqrt(a) + sqrt(b), whose square
    # is a + b + 2 sqrt(ab)).
    mu1 = torch.tensor([0.1, 0.2], dtype=torch.float64)
    mu2 = torch.tensor([0.4, -0.2], dtype=torch.float64)
    s1 = torch.tensor([[0.02, 0.01], [0.01, 0.03]], dtype=torch.float64)
    s2 = torch.tensor([[0.05, -0.02], [-0.02, 0.01]], dtype=torch.float64)
    tr_sqrt = math.sqrt(float(torch.trace(s1 @ s2)) + 2 * math.sqrt(float(s1.det() * s2.det())))
    expected = float((mu1 - mu2).square().sum() + s1.trace() + s2.trace()) - 2 * tr_sqrt
    real = with_moments(mu1, s1).reshape(-1, 1, 1, 2)
    fake = with_moments(mu2, s2, seed=1).reshape(-1, 1, 1, 2)
    metric = fid.fid_metric(Identity(2))
    got = fid.frechet_distance([real[:150], real[150:]], [fake], metric)
    assert got == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance([real], [real], metric) == pytest.approx(0.0, abs=1e-6)


def test_inception_without_weights_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not measured"):
        fid.fid_metric("inception")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "w.pth")):
        fid.fid_metric("inception", inception_weights=tmp_path / "w.pth")
    with pytest.raises(ValueError, match="feature must be one of"):
        fid.fid_metric("vgg")


def test_missing_classifier_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="fastvae train-classifier"):
        fid.load_mnist_classifier(tmp_path / "none.pt", train_if_missing=False)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        fid.ClassifierFeatures(fid.MNISTClassifier())(torch.rand(2, 3, 28, 28))


@pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)
@pytest.mark.slow
def test_tiny_classifier_trains_caches_and_separates_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVAE_CACHE", str(tmp_path))
    model, acc = fid.train_mnist_classifier(1, limit_train=4096, limit_test=500)
    assert acc > 0.7, acc  # chance is 0.1
    path = fid.default_classifier_path()
    assert path == tmp_path / "mnist_classifier.pt" and path.is_file()
    loaded = fid.load_mnist_classifier(train_if_missing=False)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x))
    # FID between two halves of the same digits is far below FID between different digits.
    from fastvae.data import load_mnist

    test = load_mnist(False, limit=1000)
    images = test.images.unsqueeze(1).float() / 255
    ones, zeros = images[test.labels == 1], images[test.labels == 0]
    metric = fid.fid_metric("mnist-classifier")
    same = fid.frechet_distance([ones[::2]], [ones[1::2]], metric)
    different = fid.frechet_distance([ones], [zeros], metric)
    assert 0 <= same < 0.2 * different, (same, different)
