"""Placeholder: the delta family is being written."""


def delta_scan(*args, **kwargs):
    raise NotImplementedError("delta_scan is not written yet")
