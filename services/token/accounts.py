"""Tenants and local users, created by an administrator (the CLI); each creation audited in the
tenant it creates or adds to, as done by the administrator's client."""

from __future__ import annotations

import dataclasses
import uuid

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import AlreadyExists, NotFound
from services.token.hashing import hash_password
from services.token.store.directory import DirectoryStore, Tenant, User


class Accounts:
    def __init__(self, directory: DirectoryStore) -> None:
        self._directory = directory

    async def create_tenant(self, tenant_id: str, tier: str, display_name: str, by: Who) -> Tenant:
        audited = AuditEvent(
            dataclasses.replace(by, tenant_id=tenant_id),
            audit.TENANT_CREATE,
            f"tenant/{tenant_id}",
            detail={"tier": tier},
        )
        tenant = await self._directory.insert_tenant(tenant_id, tier, display_name or tenant_id, audited)
        if tenant is None:
            raise AlreadyExists(f"tenant {tenant_id} already exists")
        return tenant

    async def create_user(
        self, tenant_id: str, username: str, password: str, by: Who, admin: bool = False
    ) -> User:
        if await self._directory.tenant(tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} not found")
        user_id = str(uuid.uuid4())
        audited = AuditEvent(
            dataclasses.replace(by, tenant_id=tenant_id),
            audit.USER_CREATE,
            f"user/{user_id}",
            detail={"username": username, "admin": str(admin).lower()},
        )
        user = await self._directory.insert_user(
            user_id, tenant_id, username, await hash_password(password), admin, audited
        )
        if user is None:
            raise AlreadyExists(f"username {username} is taken")
        return user
