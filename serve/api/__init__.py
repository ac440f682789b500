"""The HTTP API: the app factory, its routes (/classify, KServe v2, the repository extension, health and metrics),
error answers, middleware and the wire schemas. It reaches models only through ``serve.engine`` services and
``serve.repository``; it never touches ONNX Runtime, TensorRT or torch."""
