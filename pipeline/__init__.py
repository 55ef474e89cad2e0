"""The data path: listing, storage, decoding, sampling, transforms, inference, sink, resume."""
