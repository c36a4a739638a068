"""MICL's published data layout (MICL_TMLR): six tasks read from its annotation files.

The published loaders (MICL_TMLR `dataloader.py`) read, from the repository's root:

| task | annotation (under data/ or dataset/) | media |
| --- | --- | --- |
| image_caption | all_img_id_caption_dict.npy: {split: {img_id: caption(s)}} | dataset/flickr30k/flickr30k-images/<img_id>.jpg |
| image_qa | question_id_img_id_quesion_answer_dict.npy: {split: {qid: {img_id, question, answers}}} | dataset/coco/OK-VQA/{train2014,val2014}/COCO_<..>2014_<img_id:012>.jpg |
| video_caption | all_vid_caption_dict.npy: {split: {vid: caption(s)}} | dataset/MSRVTT/videos/all/<vid>.mp4 |
| video_qa | question_id_video_id_quesion_answer_dict.npy: {split: {qid: {video_id, question, answer}}} | dataset/MSVD/MSVD-QA/video/<video_id> |
| audio_caption | all_audio_id_cap_dict.npy: {split: {aid: caption(s)}} | dataset/AudioCaps/all_audios/<aid>.wav |
| audio_qa | question_id_audio_id_quesion_answer_dict.npy: {split: {qid: {audio_id, question, answer}}} | dataset/Clotho-AQA/audio_files/<audio_id> |

Test images of OK-VQA are COCO val2014, training ones train2014. The .npy files hold pickled
Python dicts: they are read by an unpickler that accepts plain containers and numpy arrays
only (anything else in the file is refused), never by `numpy.load(allow_pickle=True)`.
Captions prompt "describe the <modality>." as the published evaluation does; a caption
sample's references are its captions (its training target the first), an image question's
its human answers (its training target the most frequent).
"""  # noqa: E501

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmcl.data.real import RealBenchmark, RealTask
from mmcl.data.records import PLACEHOLDER, Record
from mmcl.data.synth.micl import ORDER_1, ORDER_2
from mmcl.data.tasks import TaskSpec
from mmcl.errors import MmclError

# What an object .npy of dicts, lists, strings and numbers may name: numpy's array rebuild.
_SAFE_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_npy(path: Path) -> Any:
    """The object stored in a .npy file (a dict saved with np.save), without running code."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            _, _, dtype = header(f)
            array = _SafeUnpickler(f).load() if dtype.hasobject else None
    except FileNotFoundError:
        raise MmclError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError, pickle.UnpicklingError, AttributeError) as e:
        raise MmclError(f"{path}: not a readable .npy annotation file ({e})") from None
    if array is None:
        raise MmclError(f"{path}: holds a plain {dtype} array, not MICL's annotation dict")
    return array.item() if array.shape == () else array


Reader = Callable[[Path, str, Path], list[Record]]


def _split(raw: Any, path: Path, split: str) -> dict:
    if not isinstance(raw, dict) or not isinstance(raw.get(split), dict):
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise MmclError(f"{path}: expected a dict with a {split!r} dict, found {keys}")
    return raw[split]


def _texts(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, (list, tuple, np.ndarray)):
        texts = list(value)
    else:
        texts = []
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise MmclError(f"{where}: expected a non-empty text or list of texts, got {value!r}")
    return [str(t) for t in texts]


def caption_reader(modality: str, media: Callable[[str], str]) -> Reader:
    """Records of a {split: {media_id: caption(s)}} file; media(id) is the path under root."""

    def read(path: Path, split: str, root: Path) -> list[Record]:
        prompt = f"{PLACEHOLDER[modality]}\ndescribe the {modality}."
        records = []
        for key, value in _split(read_npy(path), path, split).items():
            caps = _texts(value, f"{path} {split} {key!r}")
            media_path = root / media(str(key))
            records.append(
                Record(str(key), ((prompt, caps[0]),), {modality: (media_path,)}, tuple(caps))
            )
        return records

    return read


def qa_reader(modality: str, id_key: str, media: Callable[[str, str], str]) -> Reader:
    """Records of a {split: {qid: {<id_key>, question, answer(s)}}} file; media(id, split) is
    the path under root."""

    def read(path: Path, split: str, root: Path) -> list[Record]:
        records = []
        for qid, item in _split(read_npy(path), path, split).items():
            where = f"{path} {split} {qid!r}"
            if not isinstance(item, dict) or id_key not in item or "question" not in item:
                raise MmclError(f"{where}: expected keys {id_key!r}, 'question', 'answer(s)'")
            answers = _texts(item.get("answers", item.get("answer")), where)
            question = _texts(item["question"], where)[0]
            target = Counter(answers).most_common(1)[0][0]
            records.append(
                Record(
                    str(qid),
                    ((f"{PLACEHOLDER[modality]}\n{question}", target),),
                    {modality: (root / media(str(item[id_key]), split),)},
                    tuple(answers),
                )
            )
        return records

    return read


def _okvqa_image(img_id: str, split: str) -> str:
    coco = "val2014" if split == "test" else "train2014"
    return f"dataset/coco/OK-VQA/{coco}/COCO_{coco}_{img_id.zfill(12)}.jpg"


# task -> (annotation file name, media folder, reader, scorer, description)
TASKS: dict[str, tuple[str, str, Reader, str, str]] = {
    "image_caption": (
        "all_img_id_caption_dict.npy",
        "dataset/flickr30k/flickr30k-images",
        caption_reader("image", lambda k: f"dataset/flickr30k/flickr30k-images/{k}.jpg"),
        "cider-micl",
        "image captioning: Flickr30k photos",
    ),
    "image_qa": (
        "question_id_img_id_quesion_answer_dict.npy",
        "dataset/coco/OK-VQA",
        qa_reader("image", "img_id", _okvqa_image),
        "vqa",
        "image question answering: OK-VQA",
    ),
    "video_caption": (
        "all_vid_caption_dict.npy",
        "dataset/MSRVTT/videos/all",
        caption_reader("video", lambda k: f"dataset/MSRVTT/videos/all/{k}.mp4"),
        "cider-micl",
        "video captioning: MSR-VTT clips",
    ),
    "video_qa": (
        "question_id_video_id_quesion_answer_dict.npy",
        "dataset/MSVD/MSVD-QA/video",
        qa_reader("video", "video_id", lambda v, s: f"dataset/MSVD/MSVD-QA/video/{v}"),
        "exact",
        "video question answering: MSVD-QA",
    ),
    "audio_caption": (
        "all_audio_id_cap_dict.npy",
        "dataset/AudioCaps/all_audios",
        caption_reader("audio", lambda k: f"dataset/AudioCaps/all_audios/{k}.wav"),
        "cider-micl",
        "audio captioning: AudioCaps sounds",
    ),
    "audio_qa": (
        "question_id_audio_id_quesion_answer_dict.npy",
        "dataset/Clotho-AQA/audio_files",
        qa_reader("audio", "audio_id", lambda a, s: f"dataset/Clotho-AQA/audio_files/{a}"),
        "exact",
        "audio question answering: Clotho-AQA",
    ),
}


def micl_benchmark(name: str, order: tuple[str, ...]) -> RealBenchmark:
    """MICL's six tasks in `order`, read from the published layout under data.root."""
    tasks = []
    for task in order:
        annotation, media, reader, scorer, description = TASKS[task]
        files = (f"data/{annotation}", f"dataset/{annotation}")
        modality = task.split("_")[0]
        spec = TaskSpec(task, modality, scorer, description)
        tasks.append(RealTask(spec, files, files, reader, (media,)))
    summary = "MICL (MICL_TMLR's data under data.root): " + " -> ".join(order).replace("_", " ")
    return RealBenchmark(name, summary, tuple(tasks))


MICL_TMLR_ORDER_1 = micl_benchmark("micl-tmlr-order1", ORDER_1)
MICL_TMLR_ORDER_2 = micl_benchmark("micl-tmlr-order2", ORDER_2)
