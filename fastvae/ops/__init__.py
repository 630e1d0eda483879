"""fastvae's operators: the Triton kernels of :mod:`fastvae.kernels` with their autograd formulas.

One module per op, each holding its ``torch.autograd.Function`` and the custom ops
(``torch.library.custom_op`` with fake implementations) that torch.compile traces:

- :mod:`fastvae.ops.latent`: the reparameterization sample and the Gaussian KL
  (``kernels/latent.py``), with the Philox key of the draw;
- :mod:`fastvae.ops.recon`: the reconstruction losses (``kernels/recon.py``);
- :mod:`fastvae.ops.elbo`: both in one Function, ``recon + beta * kl`` added by the
  reconstruction kernel.

Every public call makes one Function call. Eager calls reach the launchers directly; while
torch.compile traces (``torch.compiler.is_compiling()``), the same Function reaches them through
the custom ops, whose fake implementations give the compiler shapes and strides. The public API,
with its argument checks, is :mod:`fastvae.functional`.
"""
