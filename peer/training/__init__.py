"""Compute on one peer: device choice and batch fitting, the model, the inner steps. No
networking: may import ``protos`` and ``coordinator`` only."""
