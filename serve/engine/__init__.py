"""The inference engine behind one model version: decoding (fair, bounded), the crop batcher, the backend that runs
the batches and the choice of precision. Knows nothing of HTTP."""
