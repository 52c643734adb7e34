"""The contract and the robot runtime core: numpy + onnxruntime (+ OpenCV, tokenizers, rosbags).

Imports neither torch nor rclpy nor any other package of this project; installs on its own.
Modules (import them directly; this package imports nothing):

- ``contract``: the shared vocabulary (cameras, proprio/action layouts, exported file and tensor
  names, HDF5 keys).
- ``sidecar``: ``PolicySidecar`` / ``TextEncoderSidecar``, the exported model's JSON as
  dataclasses: export writes them, the runtime reads and validates them.
- ``files``: atomic writes (one file mode), ``sha256_file``, ``verify_file``.
- ``bags``: rosbag2 reading shared by the training loader and replay evaluation.
- ``cliargs``: ``UsageError`` and argparse types shared by every command line.
- ``errors``: ``ModelLoadError`` (an unusable model folder), ``InputError`` (a bad runtime input).
- ``model``: ``PolicyModel``, ``policy.onnx`` checked against its sidecar, run with onnxruntime.
- ``text_encoder``: ``TextEncoderRuntime``, instruction text -> sentence embedding.
- ``preprocess``, ``aggregation``, ``command``, ``safety``, ``watchdog``, ``frame_phase``: the
  steps of the control loop; ``runner.PolicyRunner`` chains them for the node, replay and
  simulated evaluation.
"""
