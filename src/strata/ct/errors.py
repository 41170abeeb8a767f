"""The error raised for bad CT input; its message names the file and the problem."""


class CTInputError(ValueError):
    """A CT source file, mask or report cannot be used as it is."""
