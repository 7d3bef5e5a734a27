"""parked sms status: Twilio callbacks that came before their send was recorded

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21
"""

from alembic import op
import sqlalchemy as sa
import app.db


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('parked_sms_status',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_sid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('error_code', sa.String(length=16), nullable=False),
    sa.Column('received_at', app.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_parked_sms_status')),
    sa.UniqueConstraint('message_sid', 'status', 'error_code', name=op.f('uq_parked_sms_status_message_sid'))
    )
    with op.batch_alter_table('parked_sms_status', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_parked_sms_status_received_at'), ['received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('parked_sms_status', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_parked_sms_status_received_at'))

    op.drop_table('parked_sms_status')
