"""Race sessions: key mapping, the fixed tick, countdown and pause, the registry's cap, replay scoring and video."""

from __future__ import annotations

import numpy as np
import pytest

from core.app import race
from core.app.leaderboard import InvalidName, Leaderboard
from core.app.race import (
    KEY_BRAKE,
    KEY_GAS,
    KEY_LEFT,
    KEY_RIGHT,
    RaceConfig,
    RaceError,
    RaceFull,
    RaceRegistry,
    RaceSession,
    keys_to_action,
    replay_run,
)

FAST = RaceConfig(max_steps=40, countdown_s=0.1, resume_countdown_s=0.04)  # 5-tick countdown, 2 after a pause


class ScriptedAgent:
    """Stands in for core.models.agent.Agent: a fixed action, and a check of what it is shown."""

    def __init__(self, action=(0.0, 0.5, 0.0)):
        self.action = np.array(action, np.float32)
        self.resets = 0
        self.seen = 0

    def reset(self):
        self.resets += 1

    def act(self, obs):
        assert obs.shape == (96, 96, 3) and obs.dtype == np.uint8
        self.seen += 1
        return self.action


def run_until_done(session, mask=KEY_GAS, limit=2000):
    for i in range(limit):
        if session.finished:
            return i
        session.set_keys(mask, i + 1)
        session.tick()
    raise AssertionError("race did not finish")


@pytest.mark.parametrize("mask, expected", [
    (0, [0, 0, 0]),
    (KEY_LEFT, [-1, 0, 0]),
    (KEY_RIGHT, [1, 0, 0]),
    (KEY_LEFT | KEY_RIGHT, [0, 0, 0]),
    (KEY_GAS, [0, 1, 0]),
    (KEY_BRAKE, [0, 0, 0.8]),
    (KEY_GAS | KEY_BRAKE | KEY_RIGHT, [1, 1, 0.8]),
])
def test_keys_map_to_gymnasium_keyboard_actions(mask, expected):
    action = keys_to_action(mask)
    assert action.dtype == np.float32 and action.shape == (3,)
    np.testing.assert_allclose(action, expected)


def test_countdown_then_one_step_per_tick():
    s = RaceSession(seed=3, mode="solo", player="Ann", config=FAST)
    assert s.status == "countdown"
    for _ in range(FAST.countdown_ticks):
        assert s.tick()
    assert s.status == "running" and s.steps == 0
    s.set_keys(KEY_GAS, 7)
    for i in range(10):
        s.tick()
    version, meta, frames = s.view()
    assert s.steps == 10 and meta["t"] == pytest.approx(10 / 50) and meta["ack"] == 7
    assert len(frames) == 1 and frames[0].shape == (96, 96, 3)
    np.testing.assert_array_equal(s.human.action_log(), np.tile([0, 1, 0], (10, 1)))
    assert meta["drivers"][0]["score"] == pytest.approx(s.human.score, abs=0.05)


def test_pause_stops_time_and_a_dropped_connection_pauses():
    s = RaceSession(seed=3, mode="solo", player="Ann", config=dataclass_replace(FAST, countdown_s=0.0))
    s.attach()
    s.tick()
    s.pause()
    before = s.view()[0]
    for _ in range(5):
        assert not s.tick()
    assert s.steps == 1 and s.view()[0] == before
    s.resume()
    assert s.status == "countdown"
    for _ in range(FAST.resume_ticks):
        s.tick()
    s.tick()
    assert s.status == "running" and s.steps == 2

    s.detach()
    assert s.status == "paused" and s.pause_reason == "disconnected" and not s.connected
    s.tick()
    s.attach()  # coming back does not start the car by surprise
    s.tick()
    assert s.status == "paused" and s.steps == 2
    s.command("toggle_pause")
    s.command("no such command")
    s.tick()
    assert s.status == "countdown"


def dataclass_replace(config, **changes):
    import dataclasses
    return dataclasses.replace(config, **changes)


def test_run_ends_at_max_steps_and_is_handed_over_once():
    finished = []
    s = RaceSession(seed=4, mode="solo", player="Ann", config=FAST, on_finish=finished.append)
    run_until_done(s)
    assert s.status == "finished" and s.human.outcome == "time" and s.steps == FAST.max_steps
    s.tick()
    s.end()
    assert len(finished) == 1
    (summary, actions), = finished[0].runs
    assert summary["label"] == "Ann" and actions.shape == (FAST.max_steps, 3)
    s.command("restart")  # a finished race restarts from the page (which checks the cap), not the socket
    s.tick()
    assert s.finished and s.attempt == 1


def test_restart_starts_the_same_track_over():
    s = RaceSession(seed=4, mode="solo", player="Ann", config=FAST)
    first = s.view()[2][0].copy()
    for _ in range(20):
        s.set_keys(KEY_GAS | KEY_LEFT)
        s.tick()
    v = s.view()[0]
    s.command("restart")
    s.tick()
    assert s.attempt == 2 and s.status == "countdown" and s.steps == 0 and s.view()[0] > v
    assert len(s.human.actions) == 0
    np.testing.assert_array_equal(s.view()[2][0], first)


def test_race_against_the_ai_steps_both_cars_on_the_same_track():
    agent = ScriptedAgent()
    finished = []
    s = RaceSession(seed=5, mode="vs_ai", player="Ann", config=FAST, agent=agent, on_finish=finished.append)
    assert [d.kind for d in s.drivers] == ["human", "ai"] and agent.resets == 1
    np.testing.assert_array_equal(s.drivers[0].obs, s.drivers[1].obs)
    run_until_done(s, mask=KEY_BRAKE)
    assert agent.seen == FAST.max_steps
    assert [d.steps for d in s.drivers] == [FAST.max_steps] * 2
    runs = finished[0].runs
    assert [r[0]["kind"] for r in runs] == ["human", "ai"]
    np.testing.assert_allclose(runs[1][1], np.tile(agent.action, (FAST.max_steps, 1)))


def test_ending_early_hands_the_ais_run_over_to_be_driven_to_its_end():
    finished = []
    agent = ScriptedAgent()
    s = RaceSession(seed=5, mode="vs_ai", player="Ann", config=FAST, agent=agent, on_finish=finished.append)
    for _ in range(FAST.countdown_ticks + 8):
        s.set_keys(KEY_GAS)
        s.tick()
    seen_frame = s.view()[2][1].copy()
    s.command("end")
    s.tick()
    assert s.finished and [d.outcome for d in s.drivers] == ["ended", "ended"]
    (race_over,) = finished
    assert [r[0]["kind"] for r in race_over.runs] == ["human"]  # the AI's run is not over: it goes on
    (rest,) = race_over.going_on
    assert rest.kind == "ai" and rest.steps == 8 and not rest.done and s.drivers[1].env is None
    rest.drive_to_end(FAST.max_steps)
    assert rest.outcome == "time" and rest.steps == FAST.max_steps and agent.seen == FAST.max_steps
    np.testing.assert_array_equal(rest.action_log()[:8], s.drivers[1].action_log())
    # What the player saw when the race ended stays as it was.
    assert s.drivers[1].steps == 8 and s.status_dict()["drivers"][1]["outcome"] == "ended"
    np.testing.assert_array_equal(s.view()[2][1], seen_frame)
    s.close()  # the handed-over env is its new driver's to close


def test_a_race_ended_in_its_countdown_or_abandoned_drives_nothing_on():
    for record in (True, False):
        finished = []
        s = RaceSession(seed=5, mode="vs_ai", player="Ann", config=FAST, agent=ScriptedAgent(),
                        on_finish=finished.append)
        s.tick()
        s.end(record=record)
        assert s.finished and all(race.going_on == [] for race in finished) and s.drivers[1].env is not None


def test_a_persons_run_ended_too_soon_is_scored_but_not_recorded():
    summary = {"label": "Ann", "kind": "human", "steps": 2, "outcome": "ended"}
    assert "ended after 2 steps" in race.unrecorded_reason(summary, 250)
    assert "250 steps (5 s)" in race.unrecorded_reason(summary, 250)
    assert race.unrecorded_reason(dict(summary, steps=250), 250) == ""
    assert race.unrecorded_reason(dict(summary, outcome="off-track"), 250) == ""  # over on its own: it counts
    assert race.unrecorded_reason(dict(summary, kind="ai"), 250) == ""


def test_watch_mode_needs_an_ai():
    with pytest.raises(RaceError, match="AI"):
        RaceSession(seed=1, mode="watch", player="AI", config=FAST)
    with pytest.raises(RaceError, match="mode"):
        RaceSession(seed=1, mode="drift", player="AI", config=FAST)


def test_replay_scores_the_live_run_exactly():
    """The server's score is the replay's; it must be the score the player saw, rendered or not."""
    s = RaceSession(seed=11, mode="solo", player="Ann", config=dataclass_replace(FAST, max_steps=120))
    pattern = [KEY_GAS] * 30 + [KEY_GAS | KEY_LEFT] * 20 + [KEY_BRAKE | KEY_RIGHT] * 20 + [KEY_GAS] * 60
    for i in range(FAST.countdown_ticks + 120):
        s.set_keys(pattern[min(i, len(pattern) - 1)])
        s.tick()
    live = s.human
    assert live.done
    fast = replay_run(11, live.action_log())
    rendered = replay_run(11, live.action_log(), render=True)
    assert fast == rendered
    assert fast.score == live.score and fast.steps == live.steps == 120
    assert (fast.tiles, fast.total_tiles) == (live.tiles, live.total_tiles) and fast.tiles > 0
    assert fast.outcome is None  # the log ran out before the episode ended
    assert replay_run(12, live.action_log()).score != live.score  # another track scores otherwise


def test_a_tile_left_behind_is_counted_as_skipped_while_the_car_drives():
    """The count the page shows beside the tiles: unvisited tiles behind the furthest one the car reached."""
    s = RaceSession(seed=11, mode="solo", player="Ann", config=dataclass_replace(FAST, max_steps=200))
    for _ in range(FAST.countdown_ticks + 60):
        s.set_keys(KEY_GAS)
        s.tick()
    car = s.human
    assert car.skipped == 0 and car.lap.furthest > 5  # straight ahead from the start: nothing skipped
    car.env.unwrapped.road[3].road_visited = False  # as if the car had cut across tile 3
    car.env.unwrapped.tile_visited_count -= 1
    s.tick()
    assert car.skipped == 1 and car.summary()["skipped"] == 1
    assert s.view()[1]["drivers"][0]["skipped"] == 1


def test_check_seed():
    assert race.check_seed(" 42 ") == 42
    for bad in ("-1", "abc", "1e5", str(2**40), "<b>"):
        with pytest.raises(RaceError):
            race.check_seed(bad)


@pytest.fixture
def registry(tmp_path):
    reg = RaceRegistry(dataclass_replace(FAST, max_races=2, idle_timeout_s=60.0), board_path=tmp_path / "b.sqlite3",
                       clock=FakeClock())
    yield reg
    reg.shutdown()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_registry_caps_races_and_one_race_per_owner(registry):
    a = registry.create(owner="a", player="Ann", seed=1, mode="solo")
    a2 = registry.create(owner="a", player="Ann", seed=2, mode="solo")  # replaces a, not a new slot
    assert registry.get(a.token) is None and registry.for_owner("a") is a2
    registry.create(owner="b", player="Bob", seed=1, mode="solo")
    with pytest.raises(RaceFull, match="wait"):
        registry.create(owner="c", player="Cy", seed=1, mode="solo")
    a2.end()  # a finished race frees its slot
    registry.create(owner="c", player="Cy", seed=1, mode="solo")
    assert registry.active() == 2
    assert registry.get("not a token") is None and registry.get(None) is None


def test_a_refused_new_race_leaves_the_owners_last_race_as_it_was(registry):
    a = registry.create(owner="a", player="Ann", seed=1, mode="solo")
    a.end()
    registry.create(owner="b", player="Bob", seed=1, mode="solo")
    with pytest.raises(RaceError, match="no trained world model"):
        registry.create(owner="a", player="Ann", seed=1, mode="vs_ai", model_dir="no/such/model")
    assert registry.for_owner("a") is a
    registry.create(owner="c", player="Cy", seed=1, mode="solo")
    with pytest.raises(RaceFull):
        registry.create(owner="a", player="Ann", seed=1, mode="solo")  # "race again": no slot free
    assert registry.for_owner("a") is a and a.finished  # its results table and video are still there


def test_an_owner_id_from_a_url_leads_back_only_to_a_race_its_browser_left(registry):
    owner = "0123456789abcdef"
    assert registry.reclaim(owner) is None  # no race: nothing to lead back to
    s = registry.create(owner=owner, player="Ann", seed=1, mode="solo")
    s.attach()
    assert registry.reclaim(owner) is None  # still driven from its tab: a copied link gets its own owner
    s.detach()
    assert registry.reclaim(owner) == owner  # the tab reloaded: back to the paused race
    for junk in (None, "../../etc", "A" * 16, owner + "0"):
        assert registry.reclaim(junk) is None


def test_registry_refuses_bad_input(registry):
    with pytest.raises(InvalidName):
        registry.create(owner="a", player="x" * 10_000, seed=1, mode="solo")
    with pytest.raises(InvalidName):
        registry.create(owner="a", player="  ", seed=1, mode="solo")
    with pytest.raises(RaceError, match="track"):
        registry.create(owner="a", player="Ann", seed="1; DROP TABLE runs", mode="solo")
    with pytest.raises(RaceError, match="no trained world model"):
        registry.create(owner="a", player="Ann", seed=1, mode="vs_ai", model_dir="no/such/model")
    assert registry.active() == 0


def test_registry_drops_races_whose_player_is_gone(registry):
    s = registry.create(owner="a", player="Ann", seed=1, mode="solo")
    s.attach()
    registry._clock.now += 3600
    registry.reap()
    assert registry.get(s.token) is s  # connected: kept
    s.detach()
    registry._clock.now += 30
    registry.reap()
    assert registry.get(s.token) is s  # gone for 30 s of 60: kept, paused
    registry._clock.now += 31
    registry.reap()
    assert registry.get(s.token) is None


def test_a_race_paused_with_its_page_open_gives_its_slot_back_in_the_end(registry):
    s = registry.create(owner="a", player="Ann", seed=1, mode="solo")
    s.attach()
    s.pause()
    registry._clock.now += 59
    registry.reap()
    assert registry.get(s.token) is s  # paused for 59 s of 60: kept
    s.resume()
    registry._clock.now += 3600
    registry.reap()
    assert registry.get(s.token) is s  # running with its page: kept however long
    s.pause()
    registry._clock.now += 61
    registry.reap()
    assert registry.get(s.token) is None and registry.active() == 0


def test_finished_race_is_scored_by_replay_and_stored(registry, leaderboard_at):
    registry.board_path = leaderboard_at  # once on SQLite, once on PostgreSQL
    s = registry.create(owner="a", player="<b>Ann</b>", seed=8, mode="solo")
    run_until_done(s)
    registry.wait_scored()
    (result,) = s.status_dict()["results"]
    assert result["score"] == pytest.approx(s.human.score, abs=1e-9) and result["steps"] == FAST.max_steps
    board = Leaderboard(registry.board_path)
    row = board.get(result["run_id"])
    assert row["player"] == "<b>Ann</b>" and row["kind"] == "human" and row["seed"] == 8
    assert row["outcome"] == "time" and row["race_id"] == s.race_id
    np.testing.assert_array_equal(row["actions"], s.human.action_log())


class GatedAgent(ScriptedAgent):
    """A ScriptedAgent that, once ``gate_after`` actions are taken, waits for ``gate`` before each next one."""

    def __init__(self, gate_after: int):
        super().__init__(action=(-0.3, 0.6, 0.0))
        import threading
        self.gate, self.gate_after = threading.Event(), gate_after

    def act(self, obs):
        if self.seen >= self.gate_after:
            assert self.gate.wait(30)
        return super().act(obs)


def test_a_race_against_the_ai_ended_early_records_both_whole_runs(leaderboard_at):
    """The player ends the race at step 12 of 40: their run is recorded as it is, and the AI's run is driven
    on to step 40 in the background, replayed and recorded; the results compare both cars at step 12 and at
    the end of the AI's run, and the track now has runs of both kinds."""
    agent = GatedAgent(gate_after=20)
    reg = RaceRegistry(dataclass_replace(FAST, min_steps=10), board_path=leaderboard_at,
                       agent_loader=lambda model_dir: agent, workers=False)  # the gate cannot cross processes
    try:
        s = reg.create(owner="a", player="Ann", seed=6, mode="vs_ai", model_dir="models")
        while s.steps < 12:
            s.set_keys(KEY_GAS)
            s.tick()
        at_end = [d.score for d in s.drivers]
        s.end()
        reg._scorer.submit(lambda: None).result(30)
        status = s.status_dict()
        assert status["ai_pending"] and [r["kind"] for r in status["results"]] == ["human"]
        assert race.versus_ai(status)[-1]["ai"] is None  # the AI's final score is on its way
        agent.gate.set()
        reg.wait_scored()
        status = s.status_dict()
        assert not status["ai_pending"] and status["submit_error"] is None
        human, ai = status["results"]
        assert human["steps"] == 12 and human["outcome"] == "ended" and human["unrecorded"] == ""
        assert ai["kind"] == "ai" and ai["steps"] == FAST.max_steps and ai["outcome"] == "time"
        board = Leaderboard(leaderboard_at)
        stored = board.get(ai["run_id"])
        replayed = replay_run(6, stored["actions"])
        assert stored["race_id"] == s.race_id and stored["steps"] == FAST.max_steps
        assert stored["score"] == pytest.approx(replayed.score) and ai["live_score"] == pytest.approx(replayed.score)
        assert board.human_vs_ai(6)["kind"].tolist() == ["ai", "human"]  # the People vs AI chart has the track
        when_ended, at_the_end = race.versus_ai(status)
        assert [when_ended["you"], when_ended["ai"]] == pytest.approx(at_end) and "step 12" in when_ended["when"]
        assert at_the_end["ai"] == pytest.approx(ai["score"]) and at_the_end["gap"] == pytest.approx(
            human["score"] - ai["score"])
    finally:
        agent.gate.set()
        reg.shutdown()


def test_a_persons_run_ended_after_a_few_steps_stays_off_the_board(registry):
    s = registry.create(owner="a", player="Ann", seed=8, mode="solo")
    while s.steps < 2:
        s.set_keys(KEY_GAS)
        s.tick()
    s.end()
    registry.wait_scored()
    (result,) = s.status_dict()["results"]
    assert result["run_id"] is None and "ended after 2 steps" in result["unrecorded"]
    assert registry.board().count() == 0


def test_the_stored_score_is_the_replays_not_the_browsers(leaderboard_at, caplog):
    """A run's live score (which a tampered client or a live/replay mismatch could make anything) is not
    what the leaderboard keeps: the server's replay of its actions is, and a disagreement is logged."""
    board = Leaderboard(leaderboard_at)
    actions = np.tile(np.array([[0.0, 1.0, 0.0]], np.float32), (40, 1))
    driver = {"label": "Ann", "kind": "human", "model": "", "score": 1e6, "steps": 40, "outcome": "time"}
    with caplog.at_level("WARNING", logger="core.app.race.session"):
        (result,) = race.score_and_record(race.FinishedRace(None, "r1", 1, 8, [(driver, actions)]), board)
    replayed = race.replay_run(8, actions)
    assert result["score"] == pytest.approx(replayed.score) and result["live_score"] == 1e6
    assert board.get(result["run_id"])["score"] == pytest.approx(replayed.score) != 1e6
    assert "scored 1000000.000 live but" in caplog.text


def test_video_of_two_runs_side_by_side(tmp_path):
    import imageio.v2 as imageio
    gas = np.tile(np.array([[0, 1, 0]], np.float32), (12, 1))
    turn = np.tile(np.array([[-1, 1, 0]], np.float32), (8, 1))
    out = race.render_runs_mp4(6, [("Ann", gas), ("AI", turn)], tmp_path / "race.mp4", scale=2)
    assert out.read_bytes()[4:8] == b"ftyp"
    reader = imageio.get_reader(out)
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 13  # the reset frame and one per step of the longer run
    assert frames[0].shape == (96 * 2 + race.LABEL_BAR, 2 * 96 * 2, 3)
    left, right = frames[-1][:, :192], frames[-1][:, 192:]
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 1  # the two cars went different ways


def test_video_of_stored_runs_refuses_mixed_tracks(leaderboard_at):
    from core.app.leaderboard import Run
    board = Leaderboard(leaderboard_at)
    acts = np.zeros((3, 3), np.float32)
    a = board.add(Run("Ann", "human", "", 1, 0.0, 3, 0, 1, "ended", acts))
    b = board.add(Run("Bob", "human", "", 2, 0.0, 3, 0, 1, "ended", acts))
    with pytest.raises(RaceError, match="different tracks"):
        race.render_video([a, b], board)
    with pytest.raises(RaceError, match="no such run"):
        race.render_video([a, 999], board)
    assert race.render_video([a], board)[4:8] == b"ftyp"


def test_a_video_that_cannot_be_written_is_a_race_error(leaderboard_at, monkeypatch):
    """The pages explain RaceError; a full disk or a failing encoder must not reach them as a traceback."""
    import sqlalchemy as sa

    from core.app.leaderboard import Run, runs_table
    board = Leaderboard(leaderboard_at)
    a = board.add(Run("Ann", "human", "", 1, 0.0, 3, 0, 1, "ended", np.zeros((3, 3), np.float32)))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(race.video, "render_runs_mp4", disk_full)
    with pytest.raises(RaceError, match="could not be made.*No space left"):
        race.render_video([a], board)
    # A stored action log that no longer reads as one (a damaged blob) is explained the same way.
    monkeypatch.undo()
    with board._connect(write=True) as db:
        db.execute(sa.update(runs_table).where(runs_table.c.id == a).values(actions=b"\x01\x02"))
    with pytest.raises(RaceError, match="could not be made"):
        race.render_video([a], board)


def test_the_trained_agent_races(tiny_world_model, tmp_path):
    """The real core.models.agent.Agent, loaded from a world-model folder, drives next to the player."""
    assert race.is_world_model(tiny_world_model)
    app = tmp_path / "app"
    (app / "runs").mkdir(parents=True)
    (app / "runs" / "mine").symlink_to(tiny_world_model)
    assert race.available_models(app) == ["runs/mine"]  # models/ (absent) and runs/ (no model) are skipped
    race.warm_up(str(tiny_world_model))  # loads in the background; create() below waits on the same lock
    race.warm_up(str(tmp_path))  # not a world model: nothing to warm
    reg = RaceRegistry(dataclass_replace(FAST, max_steps=25), board_path=tmp_path / "b.sqlite3")
    try:
        s = reg.create(owner="a", player="Ann", seed=2, mode="vs_ai", model_dir=str(tiny_world_model))
        run_until_done(s)
        reg.wait_scored()
        results = s.status_dict()["results"]
        assert [r["kind"] for r in results] == ["human", "ai"]
        assert results[1]["model"] == f"{tiny_world_model} (generation 1)" and results[1]["steps"] == 25
        assert race.model_label(str(tmp_path)) == str(tmp_path)  # no evolution state: the folder alone
        assert results[1]["score"] == pytest.approx(s.drivers[1].score, abs=1e-9)
    finally:
        reg.shutdown()


def test_blas_can_be_limited_to_one_thread():
    assert race.single_threaded_blas()


@pytest.mark.parametrize("value, expected", [("100", 64), ("0", 1), ("two", 4), ("7", 7)])
def test_wm_max_races_is_kept_in_range(monkeypatch, value, expected):
    from core.config import validate
    monkeypatch.setenv("WM_MAX_RACES", value)
    assert race.session._default_max_races() == expected
    validate(RaceConfig(max_races=race.session._default_max_races()))  # the default config stays valid


@pytest.mark.parametrize("value, expected", [("5000", 1000), ("0", 1), ("short", 1000), ("300", 300)])
def test_wm_race_max_steps_is_kept_in_range(monkeypatch, value, expected):
    from core.config import validate
    monkeypatch.setenv("WM_RACE_MAX_STEPS", value)
    assert race.session._default_max_steps() == expected
    validate(RaceConfig(max_steps=race.session._default_max_steps()))


def test_the_ai_cache_keeps_one_version_per_model(tiny_world_model, tmp_path):
    """An evolution rewrites history, meta and state every generation: that must not load (and keep) another
    copy of the weights; new controller weights replace the cached ones."""
    import os
    import shutil
    model = tmp_path / "model"
    shutil.copytree(tiny_world_model, model)
    first = race.load_agent(str(model))
    key = str(model.resolve())
    cached = race.ai._AGENT_CACHE[key]
    later = os.stat(model / "controller" / "params.npz").st_mtime + 10
    os.utime(model / "controller" / "history.jsonl", (later, later))
    race.load_agent(str(model))
    assert race.ai._AGENT_CACHE[key] is cached
    params = np.load(model / "controller" / "params.npz")
    np.savez(model / "controller" / "params.npz", **{**params, "params": params["params"] + 1.0})
    os.utime(model / "controller" / "params.npz", (later, later))
    second = race.load_agent(str(model))
    assert sum(k == key for k in race.ai._AGENT_CACHE) == 1 and race.ai._AGENT_CACHE[key] is not cached
    assert np.allclose(second.controller.get_params(), first.controller.get_params() + 1.0)


@pytest.mark.parametrize("part, damage", [
    ("vae/config.json", lambda c: {**c, "z_size": "thirty-two"}),
    ("vae/config.json", lambda c: [c]),
    ("rnn/config.json", lambda c: {**c, "hidden": -4}),
    ("rnn/config.json", lambda c: {k: v for k, v in c.items() if k != "z_size"}),
    ("controller/params.npz", None),
])
def test_a_model_whose_files_do_not_fit_is_a_race_error_not_a_traceback(part, damage, tiny_world_model, tmp_path):
    import json
    import shutil
    model = tmp_path / "model"
    shutil.copytree(tiny_world_model, model)
    path = model / part
    if damage is None:  # parameters of another size than the z and h stored with them
        with np.load(path) as f:
            saved = dict(f)
        np.savez(path, **{**saved, "params": saved["params"][:-1]})
    else:
        path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    with pytest.raises(race.RaceError, match=f"cannot be loaded: .*{part.split('/')[0]}"):
        race.load_agent(str(model))
