"""Reading image files into ``ImageData`` (float32, channel-first, with spacing and modality)."""

from medfoundry.io.dicom import read_dicom
from medfoundry.io.image import ImageData
from medfoundry.io.raster import read_raster
from medfoundry.io.registry import read_image, register_reader, supported_extensions

__all__ = [
    "ImageData",
    "read_dicom",
    "read_image",
    "read_raster",
    "register_reader",
    "supported_extensions",
]
