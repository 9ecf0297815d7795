"""Where CLIP's two towers run: torch or ONNX Runtime behind one interface (``runtimes``), their
export to ONNX (``onnxexport`` for the image tower, ``onnxtext`` for the text tower) and the image
core that turns inputs into features through the image tower (``pipeline.ImageEncoder``). Imports
the text side, the image side, ``model`` and ``base``; never the uses."""
