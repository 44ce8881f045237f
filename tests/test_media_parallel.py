"""Media on a thread pool and one decoding pass per recording: the same values as one file (or one
segment) at a time, whatever the pool size; frames shrunk as they are decoded give the features
and model inputs of shrinking them afterwards."""
import logging
import pathlib
import threading

import numpy as np
import pytest
import soundfile as sf

from configs.compose import compose
from emojax import config as config_lib
from emojax.data import media
from emojax.data.media import MediaError, frame_indices, map_references, read_video_frames, read_video_segments
from emojax.data.types import Sample, Split
from emojax.encoders import classic

POOLS = (1, 2, 4)


# -- media ---------------------------------------------------------------------------------------

def write_clip(path: pathlib.Path, frames: int = 20, size=(160, 120), fps: float = 10.0, fourcc: str = "mp4v",
               seed: int = 0) -> pathlib.Path:
    """A clip whose frames all differ: a blocky random texture sliding right, a bright square
    moving down, a bar whose length counts the frames."""
    import cv2

    width, height = size
    rng = np.random.default_rng(seed)
    texture = np.kron(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)), np.ones((8, 8, 1)))
    texture = texture[:height, :width].astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"this OpenCV build cannot write {fourcc}"
    for k in range(frames):
        frame = np.roll(texture, 3 * k, axis=1).copy()
        y = (5 * k) % max(1, height - 20)
        frame[y:y + 16, width // 3:width // 3 + 16] = 250
        frame[height - 6:, : (k * width) // max(frames, 1)] = (0, 255, 0)
        writer.write(frame)
    writer.release()
    return path


def write_wave(path: pathlib.Path, seconds: float, seed: int, rate: int = 16000) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    voice = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (voice + 0.01 * rng.normal(size=len(t))).astype(np.float32), rate)
    return path


def every_frame_reference(file, segment, num_frames, size=None):
    """The frames of a segment the simplest way: decode every frame, slice the segment's frames,
    pick ``frame_indices`` of them."""
    import cv2

    capture = cv2.VideoCapture(str(file))
    fps, frames = capture.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    first, stop = 0, len(frames)
    if segment is not None:
        first = int(np.floor(segment[0] * fps + 1e-6))
        stop = max(first + 1, int(np.ceil(segment[1] * fps - 1e-6)))
    clip = frames[first:stop]
    out = []
    for i in frame_indices(len(clip), num_frames):
        frame = cv2.cvtColor(clip[i], cv2.COLOR_BGR2RGB)
        if size is not None:
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        out.append(frame)
    return np.stack(out)


# 6 s at 10 fps: overlapping, adjacent, shorter than 16 frames, inside one frame, at the very end,
# past the end (an error), and the whole file.
SEGMENTS = [(0.5, 2.25), (2.25, 4.0), (1.0, 1.3), (3.02, 3.07), (5.5, 6.0), (0.0, 6.0), (7.0, 8.0), None, (0.0, 0.6)]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("recordings")
    return {"avi": write_clip(root / "dialogue.avi", frames=60, fourcc="DIVX", seed=1),
            "mp4": write_clip(root / "dialogue.mp4", frames=60, size=(96, 64), seed=2)}


@pytest.mark.parametrize("kind", ["avi", "mp4"])
def test_read_video_segments_equal_per_segment_reads(recordings, kind):
    file = recordings[kind]
    for size, num_frames in ((None, 16), ((24, 32), 4)):
        together = read_video_segments(file, SEGMENTS, num_frames, size)
        assert len(together) == len(SEGMENTS)
        for segment, got in zip(SEGMENTS, together):
            ref = str(file) if segment is None else media.segment_ref(file, *segment)
            if segment == (7.0, 8.0):
                assert isinstance(got, MediaError) and ref in str(got) and "no decodable frames" in str(got)
                with pytest.raises(MediaError) as err:
                    read_video_frames(ref, num_frames, size)
                assert str(err.value) == str(got)
                continue
            alone = read_video_frames(ref, num_frames, size)
            assert got.dtype == np.uint8 and got.shape == alone.shape
            np.testing.assert_array_equal(got, alone)
            np.testing.assert_array_equal(got, every_frame_reference(file, segment, num_frames, size))
    assert isinstance(read_video_segments(file.parent / "gone.avi", SEGMENTS[:2])[1], MediaError)


def test_read_video_references_keep_the_given_references_and_order(recordings):
    refs = [media.segment_ref(recordings["avi"], 1.0, 2.0), str(recordings["mp4"]),
            media.segment_ref(recordings["avi"], 0.2, 0.9), media.segment_ref(recordings["avi"], 9.0, 9.5)]
    out = media.read_video_references(refs, 4, transform=classic.shrink_frame)
    for ref, got in zip(refs[:3], out):
        np.testing.assert_array_equal(got, read_video_frames(ref, 4, transform=classic.shrink_frame))
    assert isinstance(out[3], MediaError) and out[3].path == refs[3]


class _CountingCapture:
    """cv2.VideoCapture that counts the captures opened and the frames decoded."""

    opened = 0
    decoded = 0
    _real = None

    def __init__(self, *args):
        type(self).opened += 1
        self.capture = type(self)._real(*args)

    def grab(self):
        type(self).decoded += 1
        return self.capture.grab()

    def read(self):
        type(self).decoded += 1
        return self.capture.read()

    def __getattr__(self, name):
        return getattr(self.capture, name)


def test_segments_of_one_recording_are_decoded_in_one_pass(recordings, monkeypatch):
    import cv2

    counting = type("Counting", (_CountingCapture,), {"_real": cv2.VideoCapture})
    monkeypatch.setattr(cv2, "VideoCapture", counting)
    segments = [(s, s + 0.8) for s in np.arange(0.0, 5.0, 0.5)]  # ten utterances, the last ending at 5.3 s
    frames = read_video_segments(recordings["avi"], segments, 16)
    assert all(isinstance(f, np.ndarray) for f in frames)
    assert counting.opened == 1 and counting.decoded == 53  # up to the last frame needed, once
    counting.opened = counting.decoded = 0
    for s in segments:
        read_video_frames(media.segment_ref(recordings["avi"], *s), 16)
    assert counting.opened == 10 and counting.decoded == sum(int(np.ceil(10 * e - 1e-6)) for _, e in segments)


def test_segments_in_one_pass_follow_the_duration_cap(recordings, caplog):
    file = recordings["avi"]
    segments = [(0.5, 4.5), (1.0, 1.5), None, (2.0, 5.9)]
    try:
        media._warned_long.clear()
        with caplog.at_level(logging.WARNING):
            together = read_video_segments(file, segments, 8, max_seconds=2)
        warned = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
        assert len(warned) == 3  # every segment over 2 s, once each
        media._warned_long.clear()
        for segment, got in zip(segments, together):
            ref = str(file) if segment is None else media.segment_ref(file, *segment)
            np.testing.assert_array_equal(got, read_video_frames(ref, 8, max_seconds=2))
        # the cut segment (0.5, 4.5) is its first 2 s: frames 5 to 24
        np.testing.assert_array_equal(together[0], every_frame_reference(file, (0.5, 2.5), 8))
    finally:
        media._warned_long.clear()


def test_map_references_order_groups_and_errors():
    refs = ["a.avi#t=1.0000,2.0000", "b.avi", "a.avi#t=3.0000,4.0000", "c.avi", "a.avi#t=0.0000,1.0000", "bad.avi"]
    calls, lock = [], threading.Lock()

    def decode(group):
        with lock:
            calls.append(list(group))
        if group[0] == "bad.avi":
            raise MediaError("bad.avi", "cannot be decoded")
        return [f"decoded {r}" for r in group]

    def finish(value):
        if "c.avi" in value:
            raise MediaError("c.avi", "no frames")
        return value.upper()

    for workers in POOLS:
        calls.clear()
        out = list(map_references(refs, decode, finish, workers=workers, ahead=2))
        assert out[:3] == ["DECODED A.AVI#T=1.0000,2.0000", "DECODED B.AVI", "DECODED A.AVI#T=3.0000,4.0000"]
        assert isinstance(out[3], MediaError) and out[3].path == "c.avi"
        assert out[4] == "DECODED A.AVI#T=0.0000,1.0000"
        assert isinstance(out[5], MediaError) and out[5].path == "bad.avi"
        assert sorted(map(tuple, calls)) == sorted([tuple(refs[i] for i in (0, 2, 4)), ("b.avi",), ("c.avi",),
                                                    ("bad.avi",)])  # one call per file
    assert len(list(map_references(refs, decode, workers=2, by_file=False))) == 6 and len(calls) > 4

    def crash(value):
        if "b.avi" in value:
            raise RuntimeError("the reader crashed")
        return value

    results = map_references(refs, decode, crash, workers=2)
    assert next(results) == "decoded a.avi#t=1.0000,2.0000"
    with pytest.raises(RuntimeError, match="crashed"):
        next(results)


@pytest.fixture(scope="module", autouse=True)
def _stop_worker_processes():
    yield
    media.close_process_pools()


def test_map_references_on_processes_equal_one_worker(media_split, caplog):
    """Audio decoded and finished on worker processes: librosa's features and the duration cap's
    warnings as on one worker, in order; a bad file's MediaError comes back whole; any other
    exception is raised at its reference."""
    import functools

    refs = [s.audio for s in media_split.samples]
    decode = functools.partial(media.read_audios, sample_rate=16000, max_seconds=1.0)
    finish = classic.audio_features_from_samples
    runs = {}
    for workers in (1, 2):
        media._warned_long.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            runs[workers] = list(map_references(refs, decode, finish, workers=workers, by_file=False, ahead=3,
                                                processes=True))
        runs[workers, "warned"] = [r.getMessage() for r in caplog.records]
    media._warned_long.clear()
    long = [refs[i] for i in (0, 1, 3, 5, 6)]  # the clips and segments over 1 s
    assert runs[2, "warned"] == runs[1, "warned"] == [
        f"{r}: longer than 1 s; only its first 1 s are used (dataset.max_seconds)" for r in long]
    for i, ref in enumerate(refs):
        if i == 4:
            for workers in (1, 2):
                assert isinstance(runs[workers][i], MediaError) and runs[workers][i].path == ref
            assert str(runs[2][i]) == str(runs[1][i])
            continue
        expected = classic.audio_features_from_samples(media.read_audio(ref, 16000, max_seconds=1.0))
        np.testing.assert_array_equal(runs[1][i], expected)
        np.testing.assert_array_equal(runs[2][i], expected)
    wrong_rate = functools.partial(media.read_audios, sample_rate=-1)  # librosa refuses: not a MediaError
    results = map_references(refs[:2], wrong_rate, finish, workers=2, by_file=False, processes=True)
    with pytest.raises(ValueError, match="(?i)sample rate") as err:
        next(results)
    assert not isinstance(err.value, MediaError)


def test_media_workers_from_the_config():
    import os

    assert media.media_workers(0) == media.media_workers(None) == (os.cpu_count() or 1)
    assert media.media_workers(3) == 3
    with pytest.raises(ValueError, match="cache.media_workers"):
        media.media_workers(-1)
    cfg = compose("dataset=MELD--E,encoders=T")
    before = config_lib.config_hash(cfg)
    cfg.cache.media_workers = 3
    assert config_lib.config_hash(cfg) == before  # where media is decoded is not what is trained


# -- classic features ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def media_split(tmp_path_factory, recordings):
    """Eight utterances: plain clips (one larger than 192 px), segments of one recording scattered
    between them (as IEMOCAP's), and an unreadable audio and video file."""
    root = tmp_path_factory.mktemp("media-split")
    long_wave = write_wave(root / "dialogue.wav", 6.0, seed=9)
    (root / "bad.flac").write_bytes(b"not audio at all " * 40)
    (root / "bad.mp4").write_bytes(b"not a video either " * 40)
    audio = [str(write_wave(root / "a0.flac", 1.2, 0)), media.segment_ref(long_wave, 0.5, 2.0),
             str(write_wave(root / "a1.wav", 0.7, 1)), media.segment_ref(long_wave, 2.0, 3.1),
             str(root / "bad.flac"), media.segment_ref(long_wave, 4.0, 5.9), str(write_wave(root / "a2.wav", 2.5, 2)),
             media.segment_ref(long_wave, 0.1, 0.4)]
    video = [str(write_clip(root / "v0.mp4", 24, size=(320, 240), seed=3)),
             media.segment_ref(recordings["avi"], 0.5, 2.0),
             str(write_clip(root / "v1.mp4", 12, seed=4)), media.segment_ref(recordings["avi"], 2.0, 3.1),
             str(root / "bad.mp4"), media.segment_ref(recordings["avi"], 4.0, 5.9),
             str(write_clip(root / "v2.mp4", 30, size=(200, 150), seed=5)),
             media.segment_ref(recordings["avi"], 0.1, 0.4)]
    samples = [Sample(f"test/d0_u{i}", "d0", i, "A", "words", a, v, i % 3)
               for i, (a, v) in enumerate(zip(audio, video))]
    return Split("test", samples)


def classic_config(workers):
    cfg = compose("dataset=MELD--E,encoders=A+V")
    cfg.progress = False
    cfg.cache.media_workers = workers
    return cfg


def test_classic_features_equal_for_every_pool_size(media_split, caplog):
    from emojax.features.featurizer import Featurizer

    runs = {}
    for workers in POOLS:
        caplog.clear()
        featurizer = Featurizer(classic_config(workers))
        assert featurizer.media_workers == workers
        with caplog.at_level(logging.WARNING):
            runs[workers] = featurizer.split_features(media_split)
        skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
        bad = media_split.samples[4]
        errors = featurizer.encoders["A"].errors[bad.audio], featurizer.encoders["V"].errors[bad.video]
        assert errors[0].startswith(bad.audio) and errors[1].startswith(bad.video)
        assert skips == [f"skipping A input: {errors[0]}", f"skipping V input: {errors[1]}"]  # once each
    for workers in POOLS:
        for m in "AV":
            assert runs[workers].present[m].tolist() == [i != 4 for i in range(8)]
            np.testing.assert_array_equal(runs[workers].features[m], runs[1].features[m])
    # and the rows are those of one file at a time, full frames shrunk afterwards as before
    for i, sample in enumerate(media_split.samples):
        if i == 4:
            continue
        np.testing.assert_array_equal(runs[2].features["A"][i], classic.audio_features(sample.audio))
        np.testing.assert_array_equal(runs[2].features["V"][i], classic.video_features(sample.video))
        full = read_video_frames(sample.video, classic.VIDEO_FRAMES)
        np.testing.assert_array_equal(runs[2].features["V"][i], classic.video_features_from_frames(full))


def test_shrinking_on_decode_keeps_classic_video_features(media_split):
    big = media_split.samples[0].video  # 320 x 240
    full = read_video_frames(big, classic.VIDEO_FRAMES)
    shrunk = read_video_frames(big, classic.VIDEO_FRAMES, transform=classic.shrink_frame)
    assert full.shape == (16, 240, 320, 3) and shrunk.shape == (16, 144, 192, 3)
    np.testing.assert_array_equal(classic.video_features_from_frames(shrunk), classic.video_features_from_frames(full))
    small = read_video_frames(media_split.samples[2].video, 4)[0]  # 160 x 120: left as it is
    assert classic.shrink_frame(small) is small


def test_face_detectors_are_per_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        detectors = list(pool.map(lambda _: (threading.get_ident(), classic.face_detector()), range(8)))
    by_thread = {}
    for ident, detector in detectors:
        by_thread.setdefault(ident, set()).add(id(detector))
    assert all(len(ids) == 1 for ids in by_thread.values())
    if len(by_thread) > 1:
        assert len({next(iter(ids)) for ids in by_thread.values()}) == len(by_thread)


# -- neural encoders ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_neural_features import write_clip as write_clip_checkpoint
    from test_neural_features import write_videomae, write_whisper

    root = tmp_path_factory.mktemp("tiny-encoders")
    return {"videomae": write_videomae(root / "videomae"), "clip": write_clip_checkpoint(root / "clip"),
            "whisper": write_whisper(root / "whisper")}


def _encoder(family, folder):
    from emojax.encoders.media_encoders import FAMILIES, media_encoder

    return media_encoder(FAMILIES[family][0], {"family": family, "model": str(folder), "pooling": "default"})


@pytest.mark.parametrize("family", ["videomae", "clip"])
def test_frames_resized_on_decode_give_the_processor_output(tiny, media_split, family):
    from emojax.encoders import media_encoders

    encoder = _encoder(family, tiny[family])
    frames = encoder.config.num_frames if family == "videomae" else media_encoders.CLIP_FRAMES
    for sample in media_split.samples[:4]:
        full = list(read_video_frames(sample.video, frames))
        if family == "videomae":
            before = encoder.processor([full], return_tensors="np")["pixel_values"][0]
            crops = encoder.processor([full], return_tensors="np", do_rescale=False,
                                      do_normalize=False)["pixel_values"][0]
        else:
            before = encoder.processor(images=full, return_tensors="np")["pixel_values"]
            crops = encoder.processor(images=full, return_tensors="np", do_rescale=False,
                                      do_normalize=False)["pixel_values"]
        np.testing.assert_array_equal(encoder.load(sample.video), np.asarray(before, np.float32))
        np.testing.assert_array_equal(encoder.tuning_item(sample.video)["frames"], np.asarray(crops).astype(np.uint8))
    decoded = encoder.decode_group([media_split.samples[0].video])[0]
    assert min(decoded.shape[1:3]) == 32  # held at the processor's size, not 240 x 320


def test_whisper_log_mel_per_clip_equals_the_batch(tiny, media_split):
    from emojax.encoders.whisper import whisper_preprocess

    encoder = _encoder("whisper", tiny["whisper"])
    waves = [media.read_audio(media_split.samples[i].audio, 16000) for i in (0, 1, 2, 3)]
    mel, mask = whisper_preprocess(waves, encoder.extractor)
    for row, wave in enumerate(waves):
        one_mel, one_mask = encoder.prepare(wave)
        np.testing.assert_array_equal(one_mel, mel[row])
        np.testing.assert_array_equal(one_mask, mask[row])


def test_neural_features_equal_for_every_pool_size(tiny, media_split, caplog):
    from emojax.features.featurizer import Featurizer

    runs = {}
    for workers in POOLS:
        cfg = classic_config(workers)
        cfg.encoders.A.update(family="whisper", model=str(tiny["whisper"]), pooling="default")
        cfg.encoders.V.update(family="videomae", model=str(tiny["videomae"]), pooling="default")
        with caplog.at_level(logging.WARNING):
            runs[workers] = Featurizer(cfg).split_features(media_split)
    for workers in POOLS:
        for m in "AV":
            assert runs[workers].present[m].tolist() == [i != 4 for i in range(8)]
            np.testing.assert_array_equal(runs[workers].features[m], runs[1].features[m])
    assert caplog.text.count(f"skipping V input: {media_split.samples[4].video}") == len(POOLS)


def test_stored_tuning_inputs_equal_for_every_pool_size(tiny, media_split, tmp_path):
    from emojax.training.finetune_media import store_inputs

    encoder = _encoder("clip", tiny["clip"])
    paths = [s.video for s in media_split.samples] + [None]
    stores = {w: store_inputs(tmp_path / f"pool{w}", encoder, paths, desc="V inputs", progress=False, workers=w)
              for w in POOLS}
    for workers, rows in stores.items():
        assert rows.present.tolist() == [i != 4 for i in range(8)] + [False]
        assert (rows.folder / "index.json").read_text() == (stores[1].folder / "index.json").read_text()
    for i, path in enumerate(paths[:4]):
        np.testing.assert_array_equal(stores[4].item(i)["frames"], encoder.tuning_item(path)["frames"])
