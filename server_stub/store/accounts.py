"""Accounts and their devices, with their tokens (kept only as hashes)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from server_stub.store.database import Database


def token_hash(token: str) -> str:
    """Tokens are stored only as this hash."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    account_id: str
    name: str
    public_key: str  # base64 X25519: the key content keys are wrapped for


class Accounts(Database):
    def create_account(self, name: str, at: float) -> tuple[str, str]:
        """A new account; returns (account_id, account_token). Only the token's hash is kept."""
        account_id = "acct_" + secrets.token_hex(8)
        token = secrets.token_urlsafe(32)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO accounts (account_id, name, token_sha256, created_at)"
                " VALUES (?, ?, ?, ?)",
                (account_id, name, token_hash(token), at),
            )
        return account_id, token

    def account_for_token(self, token: str) -> str | None:
        row = self._one(
            "SELECT account_id FROM accounts WHERE token_sha256 = ?", (token_hash(token),)
        )
        return str(row[0]) if row else None

    def create_device(
        self, account_id: str, name: str, public_key: str, at: float
    ) -> tuple[str, str]:
        """A new device of `account_id`; returns (device_id, device_token)."""
        device_id = "dev_" + secrets.token_hex(8)
        token = secrets.token_urlsafe(32)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO devices (device_id, account_id, name, token_sha256, created_at,"
                " public_key) VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, account_id, name, token_hash(token), at, public_key),
            )
        return device_id, token

    def device_for_token(self, token: str) -> Device | None:
        row = self._one(
            "SELECT device_id, account_id, name, public_key FROM devices WHERE token_sha256 = ?",
            (token_hash(token),),
        )
        return Device(*row) if row else None

    def rename_device(self, device_id: str, name: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE devices SET name = ? WHERE device_id = ?", (name, device_id))

    def account_devices(self, account_id: str) -> list[tuple[str, str]]:
        """(device_id, name) of every device of the account, oldest first."""
        rows = self._query(
            "SELECT device_id, name FROM devices WHERE account_id = ? ORDER BY created_at",
            (account_id,),
        )
        return [(str(d), str(n)) for d, n in rows]

    def device(self, device_id: str) -> Device | None:
        row = self._one(
            "SELECT device_id, account_id, name, public_key FROM devices WHERE device_id = ?",
            (device_id,),
        )
        return Device(*row) if row else None
