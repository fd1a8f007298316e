"""`ServerConfig`: the OpenAI-compatible server's settings (importable without the server's extras)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from nightjar_rl.engine_config import EngineConfig
from nightjar_rl.schema import ConfigError, check, option


@dataclass
class ServerConfig:
    """The server's own settings, declared once (`nightjar-rl serve` flags come from here); context
    length and sampling are the engine config's."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = option("127.0.0.1", "bind address")
    port: int = option(8000, "port (0: any free port)", low=0, high=65535)
    served_model_name: str | None = option(None, "model name clients pass (default: the engine's model)", str)
    default_max_tokens: int = option(256, "max_tokens of a request that sets none (capped by the context left)",
                                     low=1)
    max_request_bytes: int = option(8 * 1024 * 1024, "largest request body in bytes (larger: HTTP 413)", low=1)

    def validate(self, where: str = "server") -> ServerConfig:
        check(self, where)
        return self

    def check_bind(self) -> None:
        """`ConfigError` (one line) unless `host:port` can be bound now (checked before a model loads;
        the port is released again at once)."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as exc:
            raise ConfigError(f"server: cannot resolve host {self.host!r} ({exc})") from None
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigError(f"server: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None

    @property
    def model_name(self) -> str:
        """The name clients pass as "model" (vLLM: --served-model-name)."""
        return self.served_model_name or self.engine.model

    @property
    def max_seq_len(self) -> int:
        return self.engine.max_seq_len

    @property
    def temperature(self) -> float:
        return self.engine.temperature

    @property
    def top_p(self) -> float:
        return self.engine.top_p
