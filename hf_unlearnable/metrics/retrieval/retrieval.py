# Copyright 2024 The hf_unlearnable developers.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Image-text retrieval metric (Recall@K, MedR, MeanR in both directions)."""

import importlib.util
import json
import os
import sys
import warnings

import datasets
import evaluate
import numpy as np
import torch

_DESCRIPTION = """
Image-text retrieval metric for CLIP-style models: Recall@1/5/10 (percent), median rank (MedR)
and mean rank (MeanR), for image-to-text (i2t) and text-to-image (t2i) retrieval, with the
Flickr30K / MS-COCO protocol used by CLIP, ALBEF and open_clip.

Inputs are embeddings: one text embedding per caption (`predictions`), the index of each
caption's image (`references`) and the image embeddings (`image_embeds`, passed to `compute`).
Both are L2-normalised and scored by cosine similarity.

- t2i: every caption is a query; its rank is the rank of its own image among all images.
- i2t: every image is a query; its rank is the best (smallest) rank among its captions,
  over all captions.

Ties are pessimistic: rank = 1 + the number of wrong candidates scoring >= the correct one,
so a model that scores everything equal lands at chance level or below, never above.
In `hf_unlearnable` it measures how well a "victim" model trained on protected
(unlearnable) data retrieves on clean data, against the same model trained on clean data.
"""


_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, or 2-D array/tensor of shape (num_captions, D)):
        Text embeddings, one row per caption. Need not be normalised.
    references (`list` of `int`, length num_captions): Image index of each caption, in
        [0, num_images). Every image needs at least one caption.
    image_embeds (2-D array/tensor/list of shape (num_images, D)): Image embeddings, row j
        for image j. Keyword-only argument of `compute` (not a feature), so the image matrix
        never goes through the Arrow cache row by row.
    chunk_size (`int`, *optional*): Caption rows scored at a time (default: about 1M scores
        per chunk). Only affects memory and speed.

Returns:
    i2t_r1, i2t_r5, i2t_r10 (`float`): image-to-text Recall@K in percent, 0 to 100.
    i2t_medr, i2t_meanr (`float`): median and mean rank of the best caption of each image,
        1 to num_captions.
    t2i_r1, t2i_r5, t2i_r10 (`float`): text-to-image Recall@K in percent, 0 to 100.
    t2i_medr, t2i_meanr (`float`): median and mean rank of each caption's image, 1 to num_images.

Examples:

    Two images with two captions each; every caption is closest to its own image:

    >>> retrieval = evaluate.load("path/to/hf_unlearnable/metrics/retrieval")  # works offline
    >>> # or: from hf_unlearnable.metrics import load_retrieval_metric; retrieval = load_retrieval_metric()
    >>> results = retrieval.compute(
    ...     predictions=[[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.2, 0.8]],
    ...     references=[0, 0, 1, 1],
    ...     image_embeds=[[1.0, 0.0], [0.0, 1.0]],
    ... )
    >>> print(results["t2i_r1"], results["i2t_r1"], results["t2i_medr"])
    100.0 100.0 1.0

    Batches of text embeddings, images at the end:

    >>> for text_batch, index_batch in [([[1.0, 0.1], [0.9, 0.0]], [0, 0]), ([[0.0, 1.0], [0.2, 0.8]], [1, 1])]:
    ...     retrieval.add_batch(predictions=text_batch, references=index_batch)
    >>> results = retrieval.compute(image_embeds=[[1.0, 0.0], [0.0, 1.0]])
"""


_CITATION = """
@inproceedings{liu2024multimodal,
  title     = {Multimodal Unlearnable Examples: Protecting Data against Multimodal Contrastive Learning},
  author    = {Liu, Xinwei and Jia, Xiaojun and Xun, Yuan and Liang, Siyuan and Cao, Xiaochun},
  booktitle = {Proceedings of the 32nd ACM International Conference on Multimedia (ACM MM)},
  year      = {2024},
  eprint    = {2407.16307},
  archivePrefix = {arXiv}
}
@inproceedings{radford2021learning,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and
               Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and
               Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  series    = {PMLR},
  volume    = {139},
  pages     = {8748--8763},
  year      = {2021}
}
"""


def _load_retrieval_metrics():
    """Import the ranking core from the installed package, else from the source checkout.

    `evaluate.load` copies this script into its module cache and imports it standalone, so a
    relative import cannot work. The import below is indented on purpose: evaluate's import
    scanner only looks at top-level lines and would otherwise demand `pip install hf_unlearnable`.
    The fallback loads ``ranking.py`` (numpy + torch only) by file path, so the metric still
    works from a source checkout, or while the rest of the package fails to import.
    """
    try:
        from hf_unlearnable.metrics.ranking import retrieval_metrics

        return retrieval_metrics
    except Exception as err:  # not installed, or the package __init__ is broken
        candidates = [os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "ranking.py")]
        # evaluate writes `<cached script>.json` with the path of the original script.
        meta = os.path.splitext(os.path.abspath(__file__))[0] + ".json"
        if os.path.isfile(meta):
            with open(meta, encoding="utf-8") as f:
                original = json.load(f).get("original file path")
            if original:
                candidates.insert(0, os.path.join(os.path.dirname(original), os.pardir, "ranking.py"))
        for path in candidates:
            if os.path.isfile(path):
                spec = importlib.util.spec_from_file_location("_hf_unlearnable_ranking", path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
                return module.retrieval_metrics
        raise ImportError(
            "The retrieval metric needs the `hf_unlearnable` package (hf_unlearnable.metrics.ranking); "
            "install it, e.g. `pip install -e <path to the hf_unlearnable repository>`."
        ) from err


retrieval_metrics = _load_retrieval_metrics()


def _embedding_matrix(values, name):
    """``values`` as a 2-D float32 torch tensor (rows = items)."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().to(torch.float32)
    else:
        array = np.asarray(values)
        if array.dtype == object:  # ragged rows come back from Arrow as an object array
            try:
                array = np.stack([np.asarray(row, dtype=np.float32) for row in array])
            except ValueError as err:
                raise ValueError(f"All rows of `{name}` must have the same embedding dimension: {err}") from None
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise TypeError(f"`{name}` must hold numbers, got dtype {array.dtype}.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only Arrow buffers; never written
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 2-D array of shape (num_items, embedding_dim), got shape {tuple(tensor.shape)}."
        )
    return tensor


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Retrieval(evaluate.Metric):
    def _info(self):
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # datasets>=4 turns Sequence(Value) into List(Value); Sequence works on 3.x too.
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=[
                "https://arxiv.org/abs/2407.16307",
                "https://arxiv.org/abs/2103.00020",
            ],
        )
        # MetricInfo(format="numpy") is refused for non-Value features, but numpy formatting
        # turns the list column into one (num_captions, D) array, ~20x faster than Python lists.
        # Set after validation; `_embedding_matrix` also accepts ragged (object) columns.
        info.format = "numpy"
        return info

    def _compute(self, predictions, references, *, image_embeds=None, chunk_size=None):
        if image_embeds is None:
            raise ValueError(
                "`image_embeds` is required: call compute(..., image_embeds=<array of shape (num_images, D)>)."
            )
        text = _embedding_matrix(predictions, "predictions")
        images = _embedding_matrix(image_embeds, "image_embeds")
        if text.shape[1] != images.shape[1]:
            raise ValueError(
                f"Embedding dimensions differ: predictions (text) have D={text.shape[1]}, "
                f"image_embeds have D={images.shape[1]}; both must come from the same model."
            )
        text = torch.nn.functional.normalize(text, dim=1)
        images = torch.nn.functional.normalize(images, dim=1)
        similarity = text @ images.T  # (num_captions, num_images) cosine similarity
        return retrieval_metrics(similarity, np.asarray(references), chunk_size=chunk_size)
