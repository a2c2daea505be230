"""``dfsearch serve``: a web app over an ensemble (Gradio).

``cli`` (flags, the port check, launch), ``classify`` (the numbers, as plain data: predict's),
``explain`` (a member's heatmap: Grad-CAM, or gradient saliency for transformers), ``app`` (the
page). Importing this package imports neither torch nor Gradio.
"""

from dfsearch.serve.cli import add_parser, run

__all__ = ["add_parser", "run"]
