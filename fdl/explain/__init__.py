"""Attributions: which input features a model's output depends on, as pure functions.

Every method has the shape ``method(forward, inputs, target=None, *, <Captum's
keyword names>, key=None)``: ``forward`` is a pure function of the batch (close
over the params: ``lambda x: model.apply(params, x)``), ``inputs`` a batch
``(N, ...)``, and the result is shaped like ``inputs``. Methods that draw random
numbers (noise tunnels, GradientSHAP) take them from ``key`` and need one; the
deterministic ones accept and ignore it, so all share one call.

``target`` picks one output per example, as in Captum: ``None`` (``forward``
already returns one value per example), an int class for every example, a
tuple of ints indexing the last output axes, or a tensor/list of one class per
example. Gradients are ``torch.func.grad`` of the summed selected outputs, so
every method composes with ``torch.func.vmap`` and ``torch.compile``.

* :func:`saliency`, :func:`input_x_gradient`
* :func:`integrated_gradients` (Riemann and Gauss-Legendre rules, convergence delta)
* :func:`noise_tunnel`, :func:`smooth_grad`, :func:`smooth_grad_sq`, :func:`vargrad`
* :func:`occlusion`
* :func:`gradient_shap`

Example:
    >>> import torch, fdl
    >>> layer = fdl.nn.Linear(4, 3)
    >>> params = layer.init(fdl.random.key(0))
    >>> x = torch.rand(2, 4)
    >>> attr = fdl.explain.integrated_gradients(lambda x: layer.apply(params, x), x, target=1)
    >>> attr.shape
    torch.Size([2, 4])
"""

from fdl.explain.gradient import input_x_gradient, saliency
from fdl.explain.integrated import METHODS, integrated_gradients, quadrature
from fdl.explain.perturbation import occlusion, occlusion_windows
from fdl.explain.shap import gradient_shap
from fdl.explain.smoothing import NT_TYPES, noise_tunnel, smooth_grad, smooth_grad_sq, vargrad

__all__ = [
    "METHODS",
    "NT_TYPES",
    "gradient_shap",
    "input_x_gradient",
    "integrated_gradients",
    "noise_tunnel",
    "occlusion",
    "occlusion_windows",
    "quadrature",
    "saliency",
    "smooth_grad",
    "smooth_grad_sq",
    "vargrad",
]
