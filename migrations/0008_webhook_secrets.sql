-- Webhook signing styles, secret rotation and secrets at rest. Expand-only: new
-- nullable or defaulted columns, so workers of the previous release keep working
-- while this runs (they ignore the columns and sign GitHub style).
--
-- style: 'github' (X-Hub-Signature-256) or 'standard' (Standard Webhooks).
-- previous_secret: the secret before `webhook rotate-secret`, still signing
-- until previous_secret_expires_at.
-- secret and previous_secret hold either a plaintext secret or, with
-- webhook.secret_key configured, `enc:v1:<key id>:<base64>` (AES-256-GCM);
-- `hookfleet migrate` encrypts plaintext ones in place. No CHECK on style, so a
-- later release may add styles without a contract step.
ALTER TABLE webhook_subscriptions
    ADD COLUMN IF NOT EXISTS style text NOT NULL DEFAULT 'github',
    ADD COLUMN IF NOT EXISTS previous_secret text,
    ADD COLUMN IF NOT EXISTS previous_secret_expires_at timestamptz;
