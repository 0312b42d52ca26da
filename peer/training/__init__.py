"""Compute on one peer: device choice and batch fitting, the model, the inner steps, and the global
state with its outer step. No networking: may import ``protos`` and ``coordinator`` only."""
