"""Convert public segmentation datasets into nnU-Net v2's raw format (`llm4seg convert`).

One module per dataset (busbra, busi, kvasir, isic2018, tn3k, tnscui, btcv) says where its files are and what
they mean; its docstring documents the expected source layout. The shared modules do the rest: `layout` lists
and pairs the files, `pixels` reads images and binarises masks (the rule is in its docstring), `folds` makes
patient-level splits, `output` writes the dataset, `convert` runs the whole conversion and `command` is the
`llm4seg convert` sub-command.

Every check runs before the first file is written: layout, images without masks, clashing or unsafe case names,
image/mask size mismatches, unreadable, truncated or oversized (decompression-bomb) files, ambiguous masks,
images whose values cannot be kept, all-empty masks, and the target folder. The dataset is then written into a
hidden folder next to the target and renamed into place at the end: an error (a full disk, a read-only folder)
removes the partial output and leaves the raw folder as it was; an existing dataset is only replaced with
`force=True` (`--force`).

Output, in `DatasetNNN_NAME/` of the raw folder: `imagesTr/CASE_0000.png` and `labelsTr/CASE.png` (0/1 masks),
`imagesTs/` + `labelsTs/` where the source has an official test split, `dataset.json`, `case_metadata.csv` where
the source records patients, devices or categories (see nnunetv2_llm4seg.case_metadata), and, where the source has
a patient-level split, `splits_final.json` (5 folds of whole patients). When `nnUNet_preprocessed` is set,
`splits_final.json` is also copied to `$nnUNet_preprocessed/DatasetNNN_NAME/`; nnU-Net's planner copies it there
itself when it is missing and refuses to plan when the copy there differs.

2D images are written for nnU-Net's NaturalImage2DIO: a colour dataset gets RGB images with channel_names
{"0": "R", "1": "G", "2": "B"}, a grayscale one a single channel (an RGB file whose channels agree within JPEG
noise counts as grayscale; if any image is in colour, all are written as RGB; alpha is dropped). 16-bit
grayscale images stay 16-bit PNGs; float or 32-bit integer images make the dataset TIFF (`.tif`, images and
labels), which keeps their values; nnU-Net normalises intensities itself. BTCV's NIfTI files are copied as they
are. Case ids are the file stems made safe (`benign (1)` -> `benign_1`); file names starting with '.' are
ignored.
"""
from nnunetv2_llm4seg.converters.command import add_convert_parser, cmd_convert
from nnunetv2_llm4seg.converters.convert import KINDS, Conversion, convert, convert_dataset, dataset_kind
from nnunetv2_llm4seg.converters.layout import ConversionError

__all__ = ["KINDS", "Conversion", "ConversionError", "add_convert_parser", "cmd_convert", "convert",
           "convert_dataset", "dataset_kind"]
