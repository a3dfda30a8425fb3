"""What every notebook imports: ``config`` (fast mode, device, seeding), ``data`` (MNIST tensors and
batches), ``models`` (the U-Nets), ``plotting``, ``training`` (metrics, checkpoints, progress) and
``evaluation`` (digit classifier, accuracy, diversity, Frechet distance) and ``checks`` (the
visible tests' assertions, which name the likely cause of a failure).

No graded function of the course lives here: the models take the student's time embedding and
adaptive normalization as arguments. Import the submodules directly, e.g.
``from helpers.data import load_mnist, batches``.
"""
