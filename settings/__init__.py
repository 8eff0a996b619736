"""The floor every package stands on: the `UserError` base (`errors`), config fields that carry their valid
values with the one validator that checks them (`fields`), and the one registry of named plug-ins (`registry`).
Pure Python, no torch: the run config, the model config and experiment specs all import it.
"""
