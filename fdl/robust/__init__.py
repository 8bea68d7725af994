"""Adversarial attacks as pure functions: batch in, perturbed batch out.

Every attack takes ``forward`` (a pure function from inputs to logits: close
over the params, ``lambda x: model.apply(params, x)``), the clean batch ``x``
in the valid range ``[0, 1]`` and labels ``y``, and returns the adversarial
batch. The objective is torchattacks': the batch-mean cross-entropy on logits
(log-probabilities give the same loss), ascended away from ``y``, or with
``targeted=True`` descended towards the classes ``y``. Random starts come from
an explicit ``fdl.random`` key, so an attack is reproducible, batches under
``torch.func.vmap`` (over data, keys or ``eps`` tensors) and compiles with
``torch.compile(fullgraph=True)``.

* :func:`fgsm`: one signed-gradient step.
* :func:`pgd`: projected gradient ascent in the L-inf (``norm="inf"``) or L2
  (``norm="2"``) ball, optional random start (:func:`random_start`).
* :func:`cw`: Carlini-Wagner L2 with Adam in tanh space.

Example:
    >>> import torch, fdl
    >>> layer = fdl.nn.Linear(4, 3)
    >>> params = layer.init(fdl.random.key(0))
    >>> x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    >>> adv = fdl.robust.pgd(lambda v: layer.apply(params, v), x, y, eps=0.1, alpha=0.02,
    ...                      steps=10, key=fdl.random.key(1))
    >>> bool(((adv - x).abs() <= 0.1 + 1e-7).all() and (adv >= 0).all() and (adv <= 1).all())
    True
"""

from fdl.robust.carlini_wagner import cw, cw_margin
from fdl.robust.projected import NORMS, pgd, random_start
from fdl.robust.single_step import fgsm

__all__ = ["NORMS", "cw", "cw_margin", "fgsm", "pgd", "random_start"]
