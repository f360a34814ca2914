"""Tenants and local users, created by an administrator (the CLI)."""

from __future__ import annotations

import uuid

from services.runtime.errors import AlreadyExists, NotFound
from services.token.hashing import hash_password
from services.token.store.directory import DirectoryStore, Tenant, User


class Accounts:
    def __init__(self, directory: DirectoryStore) -> None:
        self._directory = directory

    async def create_tenant(self, tenant_id: str, tier: str, display_name: str) -> Tenant:
        tenant = await self._directory.insert_tenant(tenant_id, tier, display_name or tenant_id)
        if tenant is None:
            raise AlreadyExists(f"tenant {tenant_id} already exists")
        return tenant

    async def create_user(self, tenant_id: str, username: str, password: str, admin: bool = False) -> User:
        if await self._directory.tenant(tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} not found")
        user = await self._directory.insert_user(
            str(uuid.uuid4()), tenant_id, username, await hash_password(password), admin
        )
        if user is None:
            raise AlreadyExists(f"username {username} is taken")
        return user
