"""The datasets promptbias knows: where they live on disk, how they are split, where to get them.

    from promptbias.data import registry
    spec = registry.get("caltech101")      # DatasetSpec; unknown names raise UserError
    spec.folder, spec.template, spec.files  # CoOp folder name, zero-shot template, files to fetch
    registry.names()                        # the 11 paper datasets, the 4 ImageNet variants, the demo world
    registry.get("imagenet_a").shift_of     # "imagenet": a test-only domain shift of ImageNet's classes
    registry.DOMAIN_SHIFTS                  # ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")

Adding a dataset means adding one ``DatasetSpec`` to ``_SPECS``. Every file lists all known sources
that serve *the same bytes* (``urls``, tried in order; ``hash`` checked when known, else the sha256 is
recorded in ``data/checksums.lock.json`` on first download) plus ``notes`` about mirrors that package
it differently and ``manual`` instructions used when nothing can be downloaded. Sources follow CoOp's
DATASETS.md and the known broken links (reference/methods-and-data.md §7).

The ImageNet variants of domain generalisation (ImageNet-V2, -Sketch, -A, -R; CoOp's DATASETS.md) are
test-only (``shift_of="imagenet"``): no train or val images, never trained on or split, only evaluated
with ImageNet's few-shot tensors as ``<variant>-from_imagenet`` (:mod:`promptbias.protocols`, params
``cross_dataset.domain_targets``). Their class names come from ImageNet's ``classnames.txt`` (CoOp asks
for a copy in each variant's folder; ``fetch`` copies ``data/raw/imagenet/classnames.txt`` when present).
"""

from __future__ import annotations

from dataclasses import dataclass

from promptbias.errors import UserError


def gdrive(file_id: str) -> tuple[str, str]:
    """Download URLs for a public Google Drive file (the new host first, then the classic endpoint)."""
    return (
        f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",
        f"https://drive.google.com/uc?export=download&id={file_id}&confirm=t",
    )


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset and how to get it.

    ``kind`` is "file" (kept as is at ``dest``), "archive" (extracted into the dataset folder, after
    dropping the member prefix ``strip``; ``nested`` names an archive inside it to extract instead) or
    "folder" (content that can only be placed by hand, e.g. ImageNet's images).
    ``provides`` are paths (relative to the dataset folder) that exist once this file is in place;
    when they all exist the file is not fetched again.
    ``split_source`` marks a file that CoOp reads only to *build* a split when ``split_zhou_*.json`` is
    missing (Pets ``annotations/``, Cars ``devkit/`` and test labels, Flowers ``imagelabels.mat`` and
    ``cat_to_name.json``): with the split json in place it is verified when present and never fetched.
    ``into`` extracts an archive into that sub-folder (ImageNet-Sketch's ``sketch/`` becomes ``images/``);
    ``same_as`` names the same file of another dataset (``"imagenet/classnames.txt"``), copied from its
    ``data/raw/`` folder when it is there instead of downloading it again.
    """

    name: str
    urls: tuple[str, ...] = ()
    hash: str | None = None  # pooch format: "sha256:…" or "md5:…"; None = trust-on-first-use lock
    kind: str = "file"
    dest: str | None = None  # for kind="file": path inside the dataset folder (default: name)
    strip: str = ""
    nested: str | None = None
    provides: tuple[str, ...] = ()
    notes: str = ""
    manual: str = ""
    split_source: bool = False
    into: str = ""
    same_as: str | None = None

    @property
    def target(self) -> str:
        return self.dest or self.name

    @property
    def present_paths(self) -> tuple[str, ...]:
        return self.provides or (self.target,)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: CoOp folder layout, split source, zero-shot template and files.

    ``layout`` picks the parser in :mod:`promptbias.data.layouts`: "split_json" (a CoOp
    ``split_zhou_*.json`` whose paths are relative to ``image_dir``), "fgvc" (official variant files),
    "imagenet" (``images/{train,val}`` + ``classnames.txt``; val is the test set), "imagenet_wnid" (test
    images in ``<image_dir>/<wnid>/``: ImageNet-Sketch, -A, -R) or "imagenetv2" (``<image_dir>/<0..999>/``).
    ``generator`` names a function that writes the dataset instead of downloading it (the demo world).
    ``shift_of`` marks a test-only domain shift of that dataset's classes (the ImageNet variants).
    """

    name: str
    display_name: str
    folder: str  # folder name under a CoOp $DATA root (for --from / data.source_root)
    template: str
    layout: str = "split_json"
    image_dir: str = ""
    split_file: str | None = None
    files: tuple[RemoteFile, ...] = ()
    num_classes: int | None = None
    sizes: tuple[int, int, int] | None = None  # train / val / test of the reference split
    generator: str | None = None
    notes: str = ""
    shift_of: str | None = None

    @property
    def test_only(self) -> bool:
        """No train or val images: never split or trained on, only evaluated (a domain shift)."""
        return self.shift_of is not None


_COOP = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
_TIP = "Tip-Adapter's README also hosts the split jsons (CLIP-LoRA #16) if Google Drive is blocked"


_IMAGENET_CLASSNAMES = "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"  # CoOp's Google Drive id of classnames.txt


def _split_json(file_name: str, drive_id: str) -> RemoteFile:
    return RemoteFile(
        name=file_name,
        urls=gdrive(drive_id),
        notes=f"CoOp split json (Google Drive id {drive_id}, linked from {_COOP}); {_TIP}",
        manual=f"download it from https://drive.google.com/file/d/{drive_id}/view",
    )


_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        name="imagenet",
        display_name="ImageNet",
        folder="imagenet",
        template="a photo of a {}.",
        layout="imagenet",
        image_dir="images",
        num_classes=1000,
        sizes=(1281167, 50000, 50000),
        files=(
            RemoteFile(
                name="ILSVRC2012 train + val images",
                kind="folder",
                provides=("images/train", "images/val"),
                manual=(
                    "register at https://image-net.org/download-images, extract ILSVRC2012_img_train.tar into "
                    "images/train/<wnid>/ and ILSVRC2012_img_val.tar into images/val/<wnid>/ (val sorted into "
                    "the 1000 wnid folders), or link an existing copy with --from"
                ),
            ),
            RemoteFile(
                name="classnames.txt",
                urls=gdrive(_IMAGENET_CLASSNAMES),
                notes="CLIP's cleaned ImageNet class names, as prepared by CoOp",
                manual=f"download it from https://drive.google.com/file/d/{_IMAGENET_CLASSNAMES}/view",
            ),
        ),
        notes=(
            "official val used as test; val drawn from train images outside the few-shot set (CoOp uses "
            "test as val); class folders and files sorted by name"
        ),
    ),
    DatasetSpec(
        name="caltech101",
        display_name="Caltech101",
        folder="caltech-101",
        template="a photo of a {}.",
        image_dir="101_ObjectCategories",
        split_file="split_zhou_Caltech101.json",
        num_classes=100,
        sizes=(4128, 1649, 2465),
        files=(
            RemoteFile(
                name="caltech-101.zip",
                urls=("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",),
                hash="md5:3138e1922a9193bfa496528edbbc45d0",
                kind="archive",
                nested="caltech-101/101_ObjectCategories.tar.gz",
                provides=("101_ObjectCategories",),
                notes=(
                    "CaltechDATA record mzrjq-6wc02 (DOI 10.22002/D1.20086); the original "
                    "http://www.vision.caltech.edu/Image_Datasets/Caltech101/101_ObjectCategories.tar.gz is gone"
                ),
                manual=(
                    "download caltech-101.zip from https://data.caltech.edu/records/mzrjq-6wc02 (or the old "
                    "101_ObjectCategories.tar.gz) and extract 101_ObjectCategories/ there"
                ),
            ),
            _split_json("split_zhou_Caltech101.json", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
        ),
    ),
    DatasetSpec(
        name="oxford_pets",
        display_name="OxfordPets",
        folder="oxford_pets",
        template="a photo of a {}, a type of pet.",
        image_dir="images",
        split_file="split_zhou_OxfordPets.json",
        num_classes=37,
        sizes=(2944, 736, 3669),
        files=(
            RemoteFile(
                name="images.tar.gz",
                urls=("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",),
                hash="md5:5c4f3ee8e5d25df40f4fd59a7f44e54c",
                kind="archive",
                provides=("images",),
            ),
            RemoteFile(
                name="annotations.tar.gz",
                urls=("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",),
                hash="md5:95a8c909bbe2e81eed6a22bccdf3f68f",
                kind="archive",
                provides=("annotations",),
                split_source=True,
            ),
            _split_json("split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
        ),
    ),
    DatasetSpec(
        name="stanford_cars",
        display_name="StanfordCars",
        folder="stanford_cars",
        template="a photo of a {}.",
        image_dir="",
        split_file="split_zhou_StanfordCars.json",
        num_classes=196,
        sizes=(6509, 1635, 8041),
        notes="ai.stanford.edu has been offline since 2023 (CoOp #61, pytorch/vision #7545)",
        files=(
            RemoteFile(
                name="cars_train.tgz",
                urls=("http://ai.stanford.edu/~jkrause/car196/cars_train.tgz",),
                kind="archive",
                provides=("cars_train",),
                notes=(
                    "mirrors: GitHub cyizhuo/Stanford-Cars-dataset, Kaggle jessicali9530/stanford-cars-dataset "
                    "(different layout: put the original cars_train/xxxxx.jpg files back)"
                ),
                manual="get cars_train/ (files 00001.jpg…08144.jpg) from a mirror listed in the registry",
            ),
            RemoteFile(
                name="cars_test.tgz",
                urls=("http://ai.stanford.edu/~jkrause/car196/cars_test.tgz",),
                kind="archive",
                provides=("cars_test",),
                notes="mirrors as for cars_train.tgz",
                manual="get cars_test/ (files 00001.jpg…08041.jpg) from a mirror listed in the registry",
            ),
            RemoteFile(
                name="car_devkit.tgz",
                urls=("https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz",),
                kind="archive",
                provides=("devkit",),
                split_source=True,
                notes="attached to pytorch/vision #7545; Kaggle meaninglesslives/cars-devkit",
                manual="get car_devkit.tgz from pytorch/vision issue #7545 and extract devkit/ there",
            ),
            RemoteFile(
                name="cars_test_annos_withlabels.mat",
                urls=("http://ai.stanford.edu/~jkrause/car196/cars_test_annos_withlabels.mat",),
                notes="attached to pytorch/vision #7545",
                manual="get it from pytorch/vision issue #7545",
                split_source=True,
            ),
            _split_json("split_zhou_StanfordCars.json", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
        ),
    ),
    DatasetSpec(
        name="oxford_flowers",
        display_name="Flowers102",
        folder="oxford_flowers",
        template="a photo of a {}, a type of flower.",
        image_dir="jpg",
        split_file="split_zhou_OxfordFlowers.json",
        num_classes=102,
        sizes=(4093, 1633, 2463),
        files=(
            RemoteFile(
                name="102flowers.tgz",
                urls=("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",),
                hash="md5:52808999861908f626f3c1f4e79d11fa",
                kind="archive",
                provides=("jpg",),
            ),
            RemoteFile(
                name="imagelabels.mat",
                urls=("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",),
                hash="md5:e0620be6f572b9609742df49c70aed4d",
                split_source=True,
            ),
            RemoteFile(
                name="cat_to_name.json",
                urls=gdrive("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"),
                manual="download it from https://drive.google.com/file/d/1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0/view",
                split_source=True,
            ),
            _split_json("split_zhou_OxfordFlowers.json", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
        ),
    ),
    DatasetSpec(
        name="food101",
        display_name="Food101",
        folder="food-101",
        template="a photo of {}, a type of food.",
        image_dir="images",
        split_file="split_zhou_Food101.json",
        num_classes=101,
        sizes=(50500, 20200, 30300),
        files=(
            RemoteFile(
                name="food-101.tar.gz",
                urls=(
                    "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                    "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/static/food-101.tar.gz",
                ),
                hash="md5:85eeb15f3717b99a5da872d97d918f87",
                kind="archive",
                strip="food-101/",
                provides=("images",),
            ),
            _split_json("split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
        ),
    ),
    DatasetSpec(
        name="fgvc_aircraft",
        display_name="FGVCAircraft",
        folder="fgvc_aircraft",
        template="a photo of a {}, a type of aircraft.",
        layout="fgvc",
        image_dir="images",
        num_classes=100,
        sizes=(3334, 3333, 3333),
        files=(
            RemoteFile(
                name="fgvc-aircraft-2013b.tar.gz",
                urls=(
                    "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                ),
                kind="archive",
                strip="fgvc-aircraft-2013b/data/",
                provides=("images", "variants.txt", "images_variant_train.txt"),
                notes="only data/ of the archive is kept, as the dataset folder",
            ),
        ),
    ),
    DatasetSpec(
        name="sun397",
        display_name="SUN397",
        folder="sun397",
        template="a photo of a {}.",
        image_dir="SUN397",
        split_file="split_zhou_SUN397.json",
        num_classes=397,
        sizes=(15880, 3970, 19850),
        notes="vision.princeton.edu returns 404 since 2025 (CoOp #90, pytorch/vision #9348)",
        files=(
            RemoteFile(
                name="SUN397.tar.gz",
                urls=("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",),
                hash="md5:8ca2778205c41d23104230ba66911c7a",
                kind="archive",
                provides=("SUN397",),
                notes="mirrors: opendatalab SUN397, Kaggle (different layout: the json needs SUN397/<letter>/<class>/)",
                manual="get SUN397.tar.gz from a mirror and extract it so that SUN397/a/abbey/… exists",
            ),
            _split_json("split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
        ),
    ),
    DatasetSpec(
        name="dtd",
        display_name="DescribableTextures",
        folder="dtd",
        template="{} texture.",
        image_dir="images",
        split_file="split_zhou_DescribableTextures.json",
        num_classes=47,
        sizes=(2820, 1128, 1692),
        files=(
            RemoteFile(
                name="dtd-r1.0.1.tar.gz",
                urls=("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",),
                hash="md5:fff73e5086ae6bdbea199a49dfb8a4c1",
                kind="archive",
                strip="dtd/",
                provides=("images",),
            ),
            _split_json("split_zhou_DescribableTextures.json", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
        ),
    ),
    DatasetSpec(
        name="eurosat",
        display_name="EuroSAT",
        folder="eurosat",
        template="a centered satellite photo of {}.",
        image_dir="2750",
        split_file="split_zhou_EuroSAT.json",
        num_classes=10,
        sizes=(13500, 5400, 8100),
        files=(
            RemoteFile(
                name="EuroSAT.zip",
                urls=(
                    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                    "https://madm.dfki.de/files/sentinel/EuroSAT.zip",
                ),
                hash="md5:c8fa014336c82ac7804f0398fcb19387",
                kind="archive",
                provides=("2750",),
                notes="also Zenodo record 7711810 (EuroSAT_RGB.zip: rename its EuroSAT_RGB/ folder to 2750/)",
                manual="download EuroSAT_RGB.zip from https://zenodo.org/records/7711810 and extract it as 2750/",
            ),
            _split_json("split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
        ),
    ),
    DatasetSpec(
        name="ucf101",
        display_name="UCF101",
        folder="ucf101",
        template="a photo of a person doing {}.",
        image_dir="UCF-101-midframes",
        split_file="split_zhou_UCF101.json",
        num_classes=101,
        sizes=(7639, 1898, 3783),
        files=(
            RemoteFile(
                name="UCF-101-midframes.zip",
                urls=gdrive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"),
                kind="archive",
                provides=("UCF-101-midframes",),
                notes="middle frames prepared by the CoOp authors; exists only on their Google Drive",
                manual="download it from https://drive.google.com/file/d/10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O/view",
            ),
            _split_json("split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
        ),
    ),
    DatasetSpec(
        name="demo_shapes",
        display_name="DemoShapes",
        folder="demo_shapes",
        template="a photo of a {}.",
        split_file="split_demo_shapes.json",
        generator="promptbias.demo.world:generate_dataset",
        notes="procedurally generated (the offline demo world)",
    ),
    DatasetSpec(
        name="demo_textures",
        display_name="DemoTextures",
        folder="demo_textures",
        template="a photo of a {} background.",
        split_file="split_demo_textures.json",
        generator="promptbias.demo.world:generate_dataset",
        notes="procedurally generated; class names carry little information",
    ),
    DatasetSpec(
        name="demo_aerial",
        display_name="DemoAerial",
        folder="demo_aerial",
        template="a photo of a {}.",
        split_file="split_demo_aerial.json",
        generator="promptbias.demo.world:generate_dataset",
        notes="procedurally generated; a strong domain shift shared by all images (like EuroSAT's)",
    ),
)


def _variant_classnames() -> RemoteFile:
    """A variant's copy of ImageNet's classnames.txt (CoOp: "Copy $DATA/imagenet/classnames.txt")."""
    return RemoteFile(
        name="classnames.txt",
        urls=gdrive(_IMAGENET_CLASSNAMES),
        same_as="imagenet/classnames.txt",
        notes="the same file as ImageNet's (CLIP's cleaned class names, as prepared by CoOp)",
        manual=(
            "copy ImageNet's classnames.txt (data/raw/imagenet/classnames.txt, or "
            f"https://drive.google.com/file/d/{_IMAGENET_CLASSNAMES}/view)"
        ),
    )


def _variant(
    name: str,
    display_name: str,
    folder: str,
    layout: str,
    image_dir: str,
    n: tuple[int, int],
    images: RemoteFile,
) -> DatasetSpec:
    """A test-only ImageNet variant (CoOp's DATASETS.md layout, template "a photo of a {}.")."""
    return DatasetSpec(
        name=name,
        display_name=display_name,
        folder=folder,
        template="a photo of a {}.",
        layout=layout,
        image_dir=image_dir,
        num_classes=n[0],
        sizes=(0, 0, n[1]),
        files=(images, _variant_classnames()),
        shift_of="imagenet",
        notes="test-only: evaluated with ImageNet's tensors (cross_dataset.domain_targets), never trained",
    )


_VARIANTS: tuple[DatasetSpec, ...] = (
    _variant(
        "imagenetv2",
        "ImageNet-V2",
        "imagenetv2",
        "imagenetv2",
        "imagenetv2-matched-frequency-format-val",
        (1000, 10000),
        RemoteFile(
            name="imagenetv2-matched-frequency.tar.gz",
            urls=(
                "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz",
                "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
            ),
            kind="archive",
            provides=("imagenetv2-matched-frequency-format-val",),
            notes="the matched-frequency set of https://github.com/modestyachts/ImageNetV2 (class folders 0..999)",
            manual=(
                "download imagenetv2-matched-frequency.tar.gz (https://github.com/modestyachts/ImageNetV2, or "
                "huggingface.co/datasets/vaishaal/ImageNetV2) and extract it"
            ),
        ),
    ),
    _variant(
        "imagenet_sketch",
        "ImageNet-Sketch",
        "imagenet-sketch",
        "imagenet_wnid",
        "images",
        (1000, 50889),
        RemoteFile(
            name="ImageNet-Sketch.zip",
            urls=(
                "https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip",
                *gdrive("1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA"),
            ),
            kind="archive",
            strip="sketch/",
            into="images",
            provides=("images",),
            notes="https://github.com/HaohanWang/ImageNet-Sketch (also on Kaggle wanghaohan/imagenetsketch); "
            "the zip holds sketch/<wnid>/, which CoOp renames to images/",
            manual=(
                "download ImageNet-Sketch.zip (https://github.com/HaohanWang/ImageNet-Sketch) and extract its "
                "sketch/ folder as images/"
            ),
        ),
    ),
    _variant(
        "imagenet_a",
        "ImageNet-A",
        "imagenet-adversarial",
        "imagenet_wnid",
        "imagenet-a",
        (200, 7500),
        RemoteFile(
            name="imagenet-a.tar",
            urls=("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",),
            hash="md5:c3e55429088dc681f30d81f4726b6595",
            kind="archive",
            provides=("imagenet-a",),
            notes="https://github.com/hendrycks/natural-adv-examples: 200 of ImageNet's classes",
            manual=(
                "download imagenet-a.tar (https://github.com/hendrycks/natural-adv-examples) and extract it"
            ),
        ),
    ),
    _variant(
        "imagenet_r",
        "ImageNet-R",
        "imagenet-rendition",
        "imagenet_wnid",
        "imagenet-r",
        (200, 30000),
        RemoteFile(
            name="imagenet-r.tar",
            urls=("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",),
            hash="md5:a61312130a589d0ca1a8fca1f2bd3337",
            kind="archive",
            provides=("imagenet-r",),
            notes="https://github.com/hendrycks/imagenet-r: 200 of ImageNet's classes",
            manual="download imagenet-r.tar (https://github.com/hendrycks/imagenet-r) and extract it",
        ),
    ),
)

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (*_SPECS, *_VARIANTS)}
PAPER_DATASETS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.generator is None)
DOMAIN_SHIFTS: tuple[str, ...] = tuple(s.name for s in _VARIANTS)


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> DatasetSpec:
    """The spec of a dataset; an unknown name is a UserError listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r} — use one of: {', '.join(REGISTRY)}") from None


def is_test_only(name: str) -> bool:
    """A registered test-only dataset (an ImageNet variant); False for any other name."""
    spec = REGISTRY.get(name)
    return spec is not None and spec.test_only


def clean_classname(name: str) -> str:
    """The class name as it goes into a prompt: underscores become spaces (CoOp/IVLP rule)."""
    return name.replace("_", " ")
