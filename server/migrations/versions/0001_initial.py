"""initial schema: every table of server.db as of the first release

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen copies of server.db's column types (UTCDateTime only adds Python-side handling)
TZ = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('payload', JSON, nullable=False),
    sa.Column('created_at', TZ, nullable=False),
    sa.Column('published_at', TZ, nullable=True),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_outbox')),
    sqlite_autoincrement=True
    )
    op.create_index('ix_outbox_pending', 'outbox', ['published_at', 'seq'], unique=False)
    op.create_table('seen_webhooks',
    sa.Column('oem', sa.String(length=64), nullable=False),
    sa.Column('delivery_id', sa.String(length=255), nullable=False),
    sa.Column('received_at', TZ, nullable=False),
    sa.PrimaryKeyConstraint('oem', 'delivery_id', name=op.f('pk_seen_webhooks'))
    )
    op.create_table('snapshots',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('saved_at', TZ, nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_snapshots'))
    )
    op.create_table('users',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=False),
    sa.Column('created_at', TZ, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('key_hash', sa.String(length=255), nullable=False),
    sa.Column('label', sa.String(length=255), nullable=True),
    sa.Column('created_at', TZ, nullable=False),
    sa.Column('revoked_at', TZ, nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_keys_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    op.create_index(op.f('ix_api_keys_user_id'), 'api_keys', ['user_id'], unique=False)
    op.create_table('oauth_states',
    sa.Column('state', sa.String(length=255), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('oem', sa.String(length=64), nullable=False),
    sa.Column('code_verifier', sa.Text(), nullable=True),
    sa.Column('redirect_to', sa.Text(), nullable=True),
    sa.Column('created_at', TZ, nullable=False),
    sa.Column('used_at', TZ, nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oauth_states_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('state', name=op.f('pk_oauth_states'))
    )
    op.create_index(op.f('ix_oauth_states_user_id'), 'oauth_states', ['user_id'], unique=False)
    op.create_table('oem_accounts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('oem', sa.String(length=64), nullable=False),
    sa.Column('account_ref', sa.String(length=255), nullable=False),
    sa.Column('tokens_encrypted', sa.Text(), nullable=False),
    sa.Column('linked_at', TZ, nullable=False),
    sa.Column('unlinked_at', TZ, nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oem_accounts_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oem_accounts')),
    sa.UniqueConstraint('oem', 'account_ref', name=op.f('uq_oem_accounts_oem_account_ref'))
    )
    op.create_index(op.f('ix_oem_accounts_user_id'), 'oem_accounts', ['user_id'], unique=False)
    op.create_table('webhook_endpoints',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('created_at', TZ, nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_webhook_endpoints_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_endpoints'))
    )
    op.create_index(op.f('ix_webhook_endpoints_user_id'), 'webhook_endpoints', ['user_id'], unique=False)
    op.create_table('vehicles',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('oem', sa.String(length=64), nullable=False),
    sa.Column('oem_vehicle_id', sa.String(length=255), nullable=False),
    sa.Column('account_id', sa.String(length=32), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=True),
    sa.Column('battery_kwh', sa.Float(), nullable=False),
    sa.Column('max_kw', sa.Float(), nullable=False),
    sa.Column('registered_at', TZ, nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['oem_accounts.id'], name=op.f('fk_vehicles_account_id_oem_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_vehicles_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vehicles')),
    sa.UniqueConstraint('oem', 'oem_vehicle_id', name=op.f('uq_vehicles_oem_oem_vehicle_id'))
    )
    op.create_index(op.f('ix_vehicles_account_id'), 'vehicles', ['account_id'], unique=False)
    op.create_index(op.f('ix_vehicles_user_id'), 'vehicles', ['user_id'], unique=False)
    op.create_table('commands',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('vehicle_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('detail', JSON, nullable=True),
    sa.Column('sent_at', TZ, nullable=False),
    sa.Column('outcome', sa.String(length=128), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('finished_at', TZ, nullable=True),
    sa.Column('verified', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['vehicle_id'], ['vehicles.id'], name=op.f('fk_commands_vehicle_id_vehicles'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_commands'))
    )
    op.create_index(op.f('ix_commands_vehicle_id'), 'commands', ['vehicle_id'], unique=False)
    op.create_table('notifications',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('vehicle_id', sa.String(length=32), nullable=True),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('body', JSON, nullable=False),
    sa.Column('created_at', TZ, nullable=False),
    sa.Column('delivered_at', TZ, nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_notifications_user_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['vehicle_id'], ['vehicles.id'], name=op.f('fk_notifications_vehicle_id_vehicles'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications'))
    )
    op.create_index(op.f('ix_notifications_user_id'), 'notifications', ['user_id'], unique=False)
    op.create_index(op.f('ix_notifications_vehicle_id'), 'notifications', ['vehicle_id'], unique=False)
    op.create_table('overrides',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('vehicle_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('ready_by_at', TZ, nullable=True),
    sa.Column('target_soc', sa.Float(), nullable=True),
    sa.Column('created_at', TZ, nullable=False),
    sa.Column('consumed_at', TZ, nullable=True),
    sa.CheckConstraint("kind IN ('ready_by', 'charge_now')", name=op.f('ck_overrides_kind')),
    sa.ForeignKeyConstraint(['vehicle_id'], ['vehicles.id'], name=op.f('fk_overrides_vehicle_id_vehicles'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_overrides'))
    )
    op.create_index(op.f('ix_overrides_vehicle_id'), 'overrides', ['vehicle_id'], unique=False)
    op.create_table('preferences',
    sa.Column('vehicle_id', sa.String(length=32), nullable=False),
    sa.Column('schedule', JSON, nullable=False),
    sa.Column('min_soc', sa.Float(), nullable=False),
    sa.Column('carbon_weight_gbp_per_kg', sa.Float(), nullable=False),
    sa.Column('updated_at', TZ, nullable=False),
    sa.ForeignKeyConstraint(['vehicle_id'], ['vehicles.id'], name=op.f('fk_preferences_vehicle_id_vehicles'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('vehicle_id', name=op.f('pk_preferences'))
    )
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('endpoint_id', sa.String(length=32), nullable=False),
    sa.Column('notification_id', sa.String(length=32), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', TZ, nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('delivered_at', TZ, nullable=True),
    sa.Column('dead_at', TZ, nullable=True),
    sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoints.id'], name=op.f('fk_webhook_deliveries_endpoint_id_webhook_endpoints'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], name=op.f('fk_webhook_deliveries_notification_id_notifications'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('endpoint_id', 'notification_id', name=op.f('uq_webhook_deliveries_endpoint_id_notification_id'))
    )
    op.create_index(op.f('ix_webhook_deliveries_next_attempt_at'), 'webhook_deliveries', ['next_attempt_at'], unique=False)
    op.create_index(op.f('ix_webhook_deliveries_notification_id'), 'webhook_deliveries', ['notification_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_webhook_deliveries_notification_id'), table_name='webhook_deliveries')
    op.drop_index(op.f('ix_webhook_deliveries_next_attempt_at'), table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_table('preferences')
    op.drop_index(op.f('ix_overrides_vehicle_id'), table_name='overrides')
    op.drop_table('overrides')
    op.drop_index(op.f('ix_notifications_vehicle_id'), table_name='notifications')
    op.drop_index(op.f('ix_notifications_user_id'), table_name='notifications')
    op.drop_table('notifications')
    op.drop_index(op.f('ix_commands_vehicle_id'), table_name='commands')
    op.drop_table('commands')
    op.drop_index(op.f('ix_vehicles_user_id'), table_name='vehicles')
    op.drop_index(op.f('ix_vehicles_account_id'), table_name='vehicles')
    op.drop_table('vehicles')
    op.drop_index(op.f('ix_webhook_endpoints_user_id'), table_name='webhook_endpoints')
    op.drop_table('webhook_endpoints')
    op.drop_index(op.f('ix_oem_accounts_user_id'), table_name='oem_accounts')
    op.drop_table('oem_accounts')
    op.drop_index(op.f('ix_oauth_states_user_id'), table_name='oauth_states')
    op.drop_table('oauth_states')
    op.drop_index(op.f('ix_api_keys_user_id'), table_name='api_keys')
    op.drop_table('api_keys')
    op.drop_table('users')
    op.drop_table('snapshots')
    op.drop_table('seen_webhooks')
    op.drop_index('ix_outbox_pending', table_name='outbox')
    op.drop_table('outbox')
