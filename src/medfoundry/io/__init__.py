"""Reading image files into ``ImageData`` (float32, channel-first, with spacing and modality),
and writing NIfTI volumes."""

from medfoundry.io.dicom import read_dicom
from medfoundry.io.dicom_series import read_dicom_series
from medfoundry.io.image import ImageData
from medfoundry.io.itk import read_itk
from medfoundry.io.nifti import read_nifti, write_nifti
from medfoundry.io.orientation import AXIS_ORDER
from medfoundry.io.raster import read_raster
from medfoundry.io.registry import read_image, register_reader, supported_extensions

__all__ = [
    "AXIS_ORDER",
    "ImageData",
    "read_dicom",
    "read_dicom_series",
    "read_image",
    "read_itk",
    "read_nifti",
    "read_raster",
    "register_reader",
    "supported_extensions",
    "write_nifti",
]
