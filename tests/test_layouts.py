"""Hub image-caption layouts -> ProtectTransform's one row per image (hf_unlearnable.layouts)."""

from __future__ import annotations

import datasets
import pytest

from hf_unlearnable.layouts import detect_layout, group_captions, merge_caption_columns, ungroup_captions
from hf_unlearnable.testing import synthetic_captions

IMAGES, CAPTIONS = 5, 3


@pytest.fixture(scope="module")
def flickr():
    """One row per image, ``caption`` a list of 3 strings (Flickr30K-style), plus an id column."""
    ds = synthetic_captions(IMAGES, image_size=16, seed=3, captions_per_image=CAPTIONS)
    return ds.add_column("img_id", [f"im{i}" for i in range(IMAGES)])


def per_caption(flickr, order):
    """COCO-style one row per caption: (image index, caption index) pairs in `order`."""
    images = flickr.with_format("arrow")["image"].to_pylist()
    captions = flickr["caption"][:]
    features = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "id": datasets.Value("int64"),
            "split": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image_id": [100 + i for i, _ in order],
            "image": [images[i] for i, _ in order],
            "caption": [captions[i][j] for i, j in order],
            "id": list(range(len(order))),  # a caption's own id: unique per row
            "split": ["train" for _ in order],
        },
        features=features,
    )


@pytest.fixture(scope="module")
def interleaved(flickr):
    """Captions ordered by caption index, so an image's rows are far apart (as in COCO annotations)."""
    return per_caption(flickr, [(i, j) for j in range(CAPTIONS) for i in range(IMAGES)])


def arrow(ds):
    return ds.with_format("arrow")[:]


# ---------------------------------------------------------------------------------- group_captions


def test_group_makes_one_row_per_image_in_first_appearance_order(flickr, interleaved):
    shuffled = interleaved.select(
        [7, 2, 5, 0, 14, 12, 1, 3, 4, 6, 8, 9, 10, 11, 13]
    )  # ids 102, 102, 100, 100, 104, ...
    grouped = group_captions(shuffled, "image_id", "caption", per_caption_columns=["id"])
    assert grouped.column_names == shuffled.column_names  # column order kept
    assert grouped["image_id"][:] == [102, 100, 104, 101, 103]
    assert isinstance(grouped.features["caption"], datasets.List)
    by_id = dict(zip(grouped["image_id"][:], grouped["caption"][:]))
    captions = flickr["caption"][:]
    # captions in row order within each group
    assert by_id[102] == [captions[2][1], captions[2][0], captions[2][2]]
    assert by_id[100] == [captions[0][1], captions[0][0], captions[0][2]]
    assert dict(zip(grouped["image_id"][:], grouped["id"][:]))[102] == [7, 2, 12]
    # the image and shared columns come from the first row of the group
    images = flickr.with_format("arrow")["image"].to_pylist()
    assert grouped.with_format("arrow")["image"].to_pylist() == [images[i] for i in (2, 0, 4, 1, 3)]
    assert grouped["split"][:] == ["train"] * IMAGES


def test_group_uses_ds_select_not_a_copy(interleaved):
    grouped = group_captions(interleaved, "image_id", "caption", per_caption_columns=["id"], max_images=2)
    assert len(grouped) == 2 and grouped["image_id"][:] == [100, 101]
    assert all(len(captions) == CAPTIONS for captions in grouped["caption"][:])


@pytest.mark.parametrize("row_numbers", [False, True])
def test_round_trip_group_ungroup(flickr, interleaved, row_numbers):
    column = "_row" if row_numbers else None
    grouped = group_captions(interleaved, "image_id", "caption", per_caption_columns=["id"], row_numbers_column=column)
    assert (column in grouped.column_names) == row_numbers
    back = ungroup_captions(grouped, "caption", per_caption_columns=["id"], row_numbers_column=column)
    assert back.features == interleaved.features
    if row_numbers:  # exact original order
        assert arrow(back).equals(arrow(interleaved))
    else:  # image by image, captions in their original order
        assert back["image_id"][:] == [100 + i for i in range(IMAGES) for _ in range(CAPTIONS)]
        assert back["id"][:] == [j * IMAGES + i for i in range(IMAGES) for j in range(CAPTIONS)]
        assert back["caption"][:] == [c for captions in flickr["caption"][:] for c in captions]


def test_round_trip_of_contiguous_layout_is_identity(flickr):
    contiguous = per_caption(flickr, [(i, j) for i in range(IMAGES) for j in range(CAPTIONS)])
    grouped = group_captions(contiguous, "image_id", "caption", per_caption_columns=["id"])
    assert grouped["caption"][:] == flickr["caption"][:]
    assert arrow(ungroup_captions(grouped, "caption", per_caption_columns=["id"])).equals(arrow(contiguous))


def test_group_names_id_and_column_when_a_shared_column_differs(interleaved):
    with pytest.raises(ValueError, match=r"image_id=100 but differ in column 'id'.*per_caption_columns=\['id'\]"):
        group_captions(interleaved, "image_id", "caption")


def test_group_detects_different_images_under_one_id(flickr):
    ds = per_caption(flickr, [(0, 0), (1, 1)]).map(lambda row: {"image_id": 7}).remove_columns("id")
    with pytest.raises(ValueError, match=r"image_id=7 but differ in column 'image' \(a different image\)"):
        group_captions(ds, "image_id", "caption")
    assert len(group_captions(ds, "image_id", "caption", check_images=False)) == 1


def test_group_errors(flickr, interleaved):
    with pytest.raises(ValueError, match="one caption string per row.*no grouping needed"):
        group_captions(flickr, "img_id", "caption")
    with pytest.raises(ValueError, match=r"image_id_column='nope' is not a column.*\['image_id'"):
        group_captions(interleaved, "nope", "caption")
    with pytest.raises(ValueError, match="row_numbers_column='split' is already a column"):
        group_captions(interleaved, "image_id", "caption", per_caption_columns=["id"], row_numbers_column="split")
    nulls = interleaved.map(lambda row, index: {"image_id": None if index == 4 else row["image_id"]}, with_indices=True)
    with pytest.raises(ValueError, match="empty \\(null\\) at row 4"):
        group_captions(nulls, "image_id", "caption", per_caption_columns=["id"])
    with pytest.raises(TypeError, match="DatasetDict pick a split"):
        group_captions(datasets.DatasetDict({"train": interleaved}), "image_id", "caption")


def test_ungroup_rejects_mismatched_per_caption_lists(flickr):
    ds = flickr.add_column("ids", [[1]] * IMAGES)
    with pytest.raises(ValueError, match="Row 0: column 'ids' has 1 values but 'caption' has 3"):
        ungroup_captions(ds, "caption", per_caption_columns=["ids"])
    with pytest.raises(ValueError, match="needs a list per row in column 'img_id'"):
        ungroup_captions(flickr, "img_id")


def test_group_empty_dataset(interleaved):
    grouped = group_captions(interleaved.select([]), "image_id", "caption", per_caption_columns=["id"])
    assert len(grouped) == 0 and isinstance(grouped.features["caption"], datasets.List)


# ---------------------------------------------------------------------------------- detect_layout


def test_detect_list_of_captions_needs_no_grouping(flickr):
    assert detect_layout(flickr) == {"image_column": "image", "caption_column": "caption", "group_by": None}


def test_detect_per_caption_layout_groups_by_repeating_id(interleaved):
    # "id" is unique per row (a caption id) so it is not the image id; "image_id" repeats
    assert detect_layout(interleaved) == {"image_column": "image", "caption_column": "caption", "group_by": "image_id"}
    cocoid = interleaved.rename_columns({"image_id": "cocoid"})
    assert detect_layout(cocoid)["group_by"] == "cocoid"
    only_id = interleaved.remove_columns("id").rename_columns({"image_id": "id"})
    assert detect_layout(only_id)["group_by"] == "id"


def test_detect_one_caption_per_image_and_other_names(flickr):
    single = synthetic_captions(4, image_size=16).add_column("id", [0, 1, 2, 3])
    assert detect_layout(single)["group_by"] is None  # ids never repeat
    karpathy = flickr.rename_columns({"caption": "sentences", "image": "img"})
    assert detect_layout(karpathy) == {"image_column": "img", "caption_column": "sentences", "group_by": None}
    assert detect_layout(flickr.rename_columns({"caption": "sentences_raw"}))["caption_column"] == "sentences_raw"


def test_detect_explicit_columns(flickr, interleaved):
    assert detect_layout(interleaved, "image", "caption", "split")["group_by"] == "split"
    with pytest.raises(ValueError, match="already holds a list.*drop image_id_column"):
        detect_layout(flickr, image_id_column="img_id")
    with pytest.raises(ValueError, match=r"caption_column \(--caption-column\)='nope' is not a column"):
        detect_layout(flickr, caption_column="nope")
    with pytest.raises(ValueError, match="Caption column 'image' holds image, not strings"):
        detect_layout(flickr, caption_column="image")


def test_detect_errors_list_columns_and_flag(flickr):
    no_caption = flickr.rename_columns({"caption": "words"})
    with pytest.raises(ValueError, match=r"No caption column found.*words \(list of string\).*--caption-column"):
        detect_layout(no_caption)
    both = flickr.add_column("text", ["x"] * IMAGES)
    with pytest.raises(
        ValueError, match=r"Several caption columns are possible: \['caption', 'text'\].*--caption-column"
    ):
        detect_layout(both)
    assert detect_layout(both, caption_column="text")["caption_column"] == "text"
    no_image = flickr.cast_column("image", datasets.Image(decode=False)).map(
        lambda row: {"url": "http://x"}, remove_columns=["image"]
    )
    with pytest.raises(ValueError, match=r"No image column found.*url \(string\).*--image-column"):
        detect_layout(no_image)
    nested = flickr.map(lambda row: {"sentences": [{"raw": text, "tokens": text.split()} for text in row["caption"]]})
    nested = nested.remove_columns("caption")
    with pytest.raises(ValueError, match=r"'sentences' holds list of struct.*s\['raw'\]"):
        detect_layout(nested)


# ---------------------------------------------------------------------------------- merge_caption_columns


def numbered(flickr):
    """Flickr8K-style: one caption per column, caption_0 .. caption_2."""
    captions = flickr["caption"][:]
    columns = {f"caption_{j}": [texts[j] for texts in captions] for j in range(CAPTIONS)}
    columns["caption_1"][2] = None  # a missing caption
    columns["caption_2"][3] = "  "  # a blank one
    ds = flickr.remove_columns("caption")
    for name, values in columns.items():
        ds = ds.add_column(name, values, feature=datasets.Value("string"))
    return ds.select_columns(["caption_0", "image", "caption_1", "caption_2", "img_id"])


def test_merge_caption_columns_makes_a_list_column(flickr):
    ds = numbered(flickr)
    with pytest.raises(
        ValueError,
        match=r"spread over columns \['caption_0', 'caption_1', 'caption_2'\].*"
        r"--caption-column caption_0,caption_1,caption_2",
    ):
        detect_layout(ds)
    merged = merge_caption_columns(ds, ["caption_0", "caption_1", "caption_2"])
    assert merged.column_names == ["captions", "image", "img_id"]
    expected = [list(texts) for texts in flickr["caption"][:]]
    del expected[2][1]
    del expected[3][2]
    assert merged["captions"][:] == expected
    assert detect_layout(merged) == {"image_column": "image", "caption_column": "captions", "group_by": None}
    with pytest.raises(ValueError, match="into='img_id' is already a column"):
        merge_caption_columns(ds, ["caption_0", "caption_1"], into="img_id")
    with pytest.raises(ValueError, match="Column 'image' holds image; merging needs one string per row"):
        merge_caption_columns(ds, ["caption_0", "image"])
