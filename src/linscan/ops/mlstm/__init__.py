"""Placeholder: the mlstm family is being written."""


def mlstm_scan(*args, **kwargs):
    raise NotImplementedError("mlstm_scan is not written yet")
