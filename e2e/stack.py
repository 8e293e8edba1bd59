"""Everything the check runs, started in order and stopped by one ExitStack: the logging backend (the
OpenAI stub, in-process), Anima (a subprocess of the checkout under test), the recording proxy
(in-process) and SillyTavern (a node subprocess)."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.anima import Anima, MemoryApi
from e2e.cards import Card
from e2e.flows import FLOWS, Flow
from e2e.recorder import RecorderState, recorder_app
from e2e.sillytavern import SillyTavern, installed
from tests.servers.openai_stub import StubState, stub_app
from tests.servers.runner import ServerThread

REPO = Path(__file__).resolve().parent.parent
# One character per flow; the group's members are Ivy and Jon.
NAMES = ["Ada", "Bea", "Cyd", "Dov", "Eli", "Fay", "Gus", "Hal", "Ira", "Kit"]
NAMES += ["Lou", "Max", "Ned", "Oda", "Pia", "Quin", "Rex", "Sol", "Tam", "Uma"]
GROUP_ID, GROUP_NAME, GROUP_MEMBERS = "e2e-group", "Reading Club", ("Ivy", "Jon")


def card(name: str, flow: str) -> Card:
    return Card(
        name,
        f"*{name} looks up from a book.* Welcome to the library, traveller. I am {name}.",
        f"{name} is the librarian of the {flow} wing. {name} answers briefly.",
    )


def cards_for(flows: list[Flow]) -> tuple[dict[str, Card], list[Card]]:
    """One character per flow (its name fixed by the flow's place in FLOWS, so fixtures stay stable),
    so no flow's chat can be recognised as another's; plus the group's two members."""
    per_flow = {f.name: card(NAMES[FLOWS.index(f)], f.name) for f in flows if not f.group}
    return per_flow, [card(n, "group") for n in GROUP_MEMBERS]


@dataclass
class Stack:
    backend: StubState
    recorder: RecorderState
    memory: MemoryApi
    st: SillyTavern

    def chat_requests(self) -> int:
        return sum(1 for r in self.recorder.records if r.path.endswith("/chat/completions"))

    def upstream_since(self, since: float) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, body) of every request the backend got since `since`."""
        pairs = zip(self.backend.received, self.backend.requests, strict=True)
        return [(at, body) for at, body in pairs if at >= since]


def start(exits: ExitStack, src: Path, work: Path, cards: list[Card], members: list[Card]) -> Stack:
    backend = StubState()
    backend_url = _serve(exits, ServerThread(stub_app(backend)))
    anima = Anima(src, work, backend_url)
    anima_proc = anima.launch()
    exits.callback(anima_proc.stop)
    recorder = RecorderState(upstream=anima.url)
    recorder_url = _serve(exits, ServerThread(recorder_app(recorder)))
    st = SillyTavern(installed(REPO / ".e2e" / "st"), work, f"{recorder_url}/v1")
    st.prepare(cards + members, {GROUP_ID: (GROUP_NAME, members)})
    st_proc = st.launch()  # SillyTavern compiles its frontend while Anima starts
    exits.callback(st_proc.stop)
    anima_proc.wait_ready(anima.health_url, timeout_s=900)
    st_proc.wait_ready(st.url, timeout_s=900)
    return Stack(backend, recorder, MemoryApi(anima.url), st)


def _serve(exits: ExitStack, server: ServerThread) -> str:
    server.start()
    exits.callback(server.stop)
    return server.url
