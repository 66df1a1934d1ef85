"""Datasets (CIFAR-10/100, MNIST, sklearn digits, image folders such as ImageNet), class
imbalance, on-device augmentation.

Loaders return a ``Dataset`` with uint8 NHWC images and int32 labels; scaling happens on-device
(``normalize``). This subpackage needs only numpy, jax and the standard library at import;
pooch (downloads), Pillow (JPEG CIFAR copy, image folders) and scikit-learn (digits) are
imported by the functions that need them. Data locations are arguments (``root=``, ``path=``);
the only default is the cache directory ``$MHE_JAX_DATA`` > ``~/.cache/mhe_jax``.

Every problem with a dataset's files raises a subclass of ``DatasetError``:
``DatasetNotFoundError``, ``DownloadError`` / ``ChecksumError``, ``CorruptDataError`` (names the
file and the fix). Downloads and cached files are verified (size, md5, manifest) before use; a
bad cached file is deleted and fetched or rebuilt again, with a ``CacheRepairWarning``.
"""

from mhe_jax.data._archive import extract_tar as extract_tar
from mhe_jax.data._dataset import Dataset as Dataset, make_dataset as make_dataset
from mhe_jax.data._download import (
    ENV_VAR as ENV_VAR,
    cache_dir as cache_dir,
    download_file as download_file,
    md5sum as md5sum,
)
from mhe_jax.data._errors import (
    CacheRepairWarning as CacheRepairWarning,
    ChecksumError as ChecksumError,
    CorruptDataError as CorruptDataError,
    DatasetError as DatasetError,
    DatasetLayoutError as DatasetLayoutError,
    DatasetNotFoundError as DatasetNotFoundError,
    DownloadError as DownloadError,
)
from mhe_jax.data.augment import (
    augment_batch as augment_batch,
    batches as batches,
    normalize as normalize,
    random_crop as random_crop,
    random_flip as random_flip,
    steps_per_epoch as steps_per_epoch,
)
from mhe_jax.data.cifar import (
    CIFAR10_LABEL_NAMES as CIFAR10_LABEL_NAMES,
    CIFAR10_MD5 as CIFAR10_MD5,
    CIFAR10_SIZE as CIFAR10_SIZE,
    CIFAR10_URL as CIFAR10_URL,
    CIFAR100_MD5 as CIFAR100_MD5,
    CIFAR100_SIZE as CIFAR100_SIZE,
    CIFAR100_URL as CIFAR100_URL,
    load_cifar10 as load_cifar10,
    load_cifar100 as load_cifar100,
    read_cifar_pickle as read_cifar_pickle,
    rows_to_nhwc as rows_to_nhwc,
)
from mhe_jax.data.cifar_jpeg import load_cifar10_jpeg_npz as load_cifar10_jpeg_npz
from mhe_jax.data.digits import (
    load_digits as load_digits,
    resize_nearest as resize_nearest,
    stratified_split as stratified_split,
)
from mhe_jax.data.folder import (
    IMAGE_EXTENSIONS as IMAGE_EXTENSIONS,
    list_image_folder as list_image_folder,
    load_image as load_image,
    load_image_folder as load_image_folder,
)
from mhe_jax.data.imbalance import (
    cifar10_multi_class_imbalance as cifar10_multi_class_imbalance,
    cifar10_single_class_imbalance as cifar10_single_class_imbalance,
    class_counts as class_counts,
    imbalance_by_count as imbalance_by_count,
    imbalance_by_ratio as imbalance_by_ratio,
    mnist_fig4_imbalance as mnist_fig4_imbalance,
    per_class_subset as per_class_subset,
)
from mhe_jax.data.mnist import (
    MNIST_FILES as MNIST_FILES,
    MNIST_MIRRORS as MNIST_MIRRORS,
    MNIST_SIZES as MNIST_SIZES,
    load_mnist as load_mnist,
    read_idx as read_idx,
    read_idx_images as read_idx_images,
    read_idx_labels as read_idx_labels,
)

__all__ = [
    "CIFAR10_LABEL_NAMES", "CIFAR10_MD5", "CIFAR10_SIZE", "CIFAR10_URL", "CIFAR100_MD5",
    "CIFAR100_SIZE", "CIFAR100_URL", "ENV_VAR", "IMAGE_EXTENSIONS", "MNIST_FILES",
    "MNIST_MIRRORS", "MNIST_SIZES",
    "CacheRepairWarning", "ChecksumError", "CorruptDataError", "Dataset", "DatasetError",
    "DatasetLayoutError", "DatasetNotFoundError", "DownloadError",
    "augment_batch", "batches", "cache_dir", "cifar10_multi_class_imbalance",
    "cifar10_single_class_imbalance", "class_counts", "download_file", "extract_tar",
    "imbalance_by_count", "imbalance_by_ratio", "list_image_folder", "load_cifar10",
    "load_cifar10_jpeg_npz", "load_cifar100", "load_digits", "load_image", "load_image_folder",
    "load_mnist", "make_dataset", "md5sum", "mnist_fig4_imbalance", "normalize",
    "per_class_subset", "random_crop", "random_flip", "read_cifar_pickle", "read_idx",
    "read_idx_images", "read_idx_labels", "resize_nearest", "rows_to_nhwc", "steps_per_epoch",
    "stratified_split",
]
