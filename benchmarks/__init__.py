"""fastvae's benchmarks: kernel-level comparisons against PyTorch eager and torch.compile, and
end-to-end MNIST training (``python -m benchmarks.report``, ``pytest benchmarks/``)."""
