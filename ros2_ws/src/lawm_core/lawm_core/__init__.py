"""Runtime core: numpy + onnxruntime (+ cv2, tokenizers); imports neither torch nor rclpy.

Modules (import them directly; this package imports nothing heavy):

- ``errors``: ``ModelLoadError`` (an unusable model folder), ``InputError`` (a bad runtime input).
- ``hashing``: ``sha256_file``, ``verify_file``.
- ``model``: ``PolicyModel``, the exported ``policy.onnx`` checked against ``policy.json`` and run
  with the chosen onnxruntime execution provider.
- ``text_encoder``: ``TextEncoderRuntime``, instruction text -> sentence embedding.
- ``preprocess``: ``image_from_msg_fields`` (Image message fields -> RGB), ``fit_image``
  (centre crop + resize to the model's size).
- ``aggregation``: ``TemporalAggregator``, temporal averaging of overlapping action chunks.
- ``command``: ``Command`` and ``ActionMapper``, normalised action -> twist + gripper command.
- ``safety``: ``SafetyLimits`` and ``SafetyFilter``: NaN guard, clamps, speed limits,
  workspace box, rate limit.
- ``watchdog``: ``StalenessWatchdog``, input ages and stale inputs.
"""
