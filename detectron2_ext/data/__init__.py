"""Data: TSV files with a byte-offset index, image-text pair datasets (TSV and WebDataset) and a
training loader that drops and counts skipped samples, and train loaders whose position in the
data stream is saved and restored (exact resume)."""
from .image_text import (  # noqa: F401
    DatasetEntry,
    ImageTextTSVDataset,
    SkipSample,
    decode_image_bytes,
    discover_tsv_pairs,
    expand_dataset_entries,
    is_image_tsv_name,
    text_tsv_name,
    to_rgb8,
)
from .image_text_loader import (  # noqa: F401
    SKIPPED_METRIC,
    SkipCountingBatchLoader,
    build_skipping_train_loader,
)
from .image_text_wds import (  # noqa: F401
    WebDatasetImageText,
    iterate_shard_records,
    list_shards,
    sample_text,
)
from .resumable import (  # noqa: F401
    IndexedStream,
    ResumableBatchLoader,
    WebDatasetStream,
    build_resumable_detection_train_loader,
    seeded_rngs,
)
from .tsv import (  # noqa: F401
    TSVFile,
    TSVFileList,
    TSVFormatError,
    compute_line_offsets,
    lineidx_path,
)
