"""classes.json is validated in one function: every mistake is one line naming the file and the key;
palette masks are decoded by the colours they show when classes.json gives colours."""

import json

import numpy as np
import pytest
from PIL import Image

from fcnseg.data import load_dataset
from fcnseg.data.folder import read_classes_json
from fcnseg.errors import FcnsegError


@pytest.mark.parametrize(
    "spec, fragments",
    [
        (
            [{"name": "a", "color": [1, 2, 3]}, {"name": "b", "color": [1, 2, 3]}],
            ["classes[0] ('a') and classes[1] ('b') have the same \"color\" [1, 2, 3]"],
        ),
        ([{"name": "a", "value": 0}, {"name": "b", "value": 0}], ['same "value" 0']),
        (["cat", "dog", "Cat"], ["classes[0] ('cat') and classes[2] ('Cat') have the same \"name\""]),
        ([f"c{k}" for k in range(256)], ["lists 256 classes", "at most 255"]),
        ([{"name": "a", "value": 256}], ["classes[0] ('a') \"value\" must be an integer 0..255"]),
        ([{"name": "a", "value": True}], ['"value" must be an integer 0..255']),
        ([{"name": "a", "color": [0, 0, 300]}], ['"color" must be [r, g, b]']),
        ([{"name": "a", "color": [0, 0, 0]}, {"name": "b"}], ['classes[1] has no "color" but other classes do']),
        ([{"name": "a", "colour": [0, 0, 0]}], ['classes[0] has the unknown key "colour"', 'did you mean "color"']),
        ({"classes": ["a"], "ignore": 255}, ['the top level has the unknown key "ignore"']),
        (
            {"classes": [{"name": "a", "color": [9, 9, 9]}], "ignore_color": [9, 9, 9]},
            ["\"ignore_color\" [9, 9, 9] is also class 'a'"],
        ),
        ([{"color": [0, 0, 0]}], ['classes[0] has no "name"']),
        ([], ['"classes": expected a list']),
    ],
)
def test_each_mistake_is_one_line_naming_the_file_and_key(tmp_path, spec, fragments):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(FcnsegError) as err:
        read_classes_json(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_json_names_the_place(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text('{"classes": ["a",]}')
    with pytest.raises(FcnsegError, match=r"classes.json: cannot read classes.json \(.*line 1 column"):
        read_classes_json(path)


def test_good_tables_are_accepted(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": [{"name": "background", "value": 0}, {"name": "fg", "value": 255}]}))
    assert read_classes_json(path).values == [0, 255]  # binary 0/255 masks: 255 may be a class
    path.write_text(json.dumps([f"c{k}" for k in range(255)]))
    assert len(read_classes_json(path).names) == 255


def test_palette_masks_are_read_by_colour_under_a_colour_table(tmp_path):
    """A 'P' mask whose index order differs from classes.json's: its colours, not its indices, say the class."""
    for sub in ("images", "masks"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "train" / "images" / "x.png")
    mask = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], np.uint8), mode="P")
    mask.putpalette([0, 0, 0, 0, 0, 255, 255, 0, 0] + [0] * (253 * 3))  # index 1 = blue, index 2 = red
    mask.save(tmp_path / "train" / "masks" / "x.png")
    (tmp_path / "classes.json").write_text(
        json.dumps(
            [
                {"name": "bg", "color": [0, 0, 0]},
                {"name": "red", "color": [255, 0, 0]},
                {"name": "blue", "color": [0, 0, 255]},
            ]
        )
    )
    labels = load_dataset(f"folder:{tmp_path}", "train").load_mask(0)
    assert labels.tolist() == [[0, 2, 1], [1, 2, 0]]
    (tmp_path / "classes.json").write_text(json.dumps(["bg", "red", "blue"]))  # no colours: indices are labels
    assert load_dataset(f"folder:{tmp_path}", "train").load_mask(0).tolist() == [[0, 1, 2], [2, 1, 0]]


def test_palette_masks_saved_as_rgb_are_detected_with_their_class_order(tmp_path):
    from fcnseg.palette import voc_colormap

    for sub in ("images", "masks"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "train" / "images" / "x.png")
    Image.fromarray(voc_colormap(256)[np.array([[0, 3, 3], [15, 255, 0]])]).save(tmp_path / "train" / "masks" / "x.png")
    with pytest.raises(FcnsegError) as err:
        load_dataset(f"folder:{tmp_path}", "train")
    message = str(err.value)
    assert "palette masks saved as RGB" in message and "\n" not in message
    suggested = json.loads(message.split("(rename them): ")[1].split("; or run")[0])
    assert len(suggested["classes"]) == 16 and suggested["classes"][15]["color"] == [192, 128, 128]
    (tmp_path / "classes.json").write_text(json.dumps(suggested))
    assert load_dataset(f"folder:{tmp_path}", "train").load_mask(0).tolist() == [[0, 3, 3], [15, 255, 0]]
