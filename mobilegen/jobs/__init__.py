"""The jobs the CLIs call, one module per command: export (onnx, tflite), verify, bench,
report, compare. Each takes typed options, runs the stages and the checks of verify/, and
returns a result; only export publishes a folder, through files.publish_folder."""
