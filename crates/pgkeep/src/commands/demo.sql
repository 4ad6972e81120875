-- pgkeep demo data: a small "records" database with what makes dumps interesting.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE SCHEMA records;
CREATE SCHEMA audit;
CREATE SCHEMA "Reporting";

CREATE TABLE records.customer (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    email       text UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE records.customer IS 'People who own records';

CREATE TABLE records.record (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES records.customer(id),
    title       text NOT NULL,
    body        text,
    amount      numeric(12,2) NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL
);
CREATE INDEX record_title_trgm ON records.record USING gin (title gin_trgm_ops);

CREATE SEQUENCE records.invoice_no START 1000;

CREATE TABLE audit.event (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    what    text NOT NULL
);

INSERT INTO records.customer (name, email, created_at)
SELECT 'customer ' || g, 'c' || g || '@example.invalid', timestamptz '2026-01-01' + g * interval '1 hour'
FROM generate_series(1, 200) g;

INSERT INTO records.record (customer_id, title, body, amount, created_at)
SELECT 1 + (g % 200), 'record ' || g || ' ' || md5(g::text), repeat(md5(g::text), 4),
       (g % 1000) / 10.0, timestamptz '2026-01-01' + g * interval '1 minute'
FROM generate_series(1, 5000) g;

INSERT INTO audit.event (what) SELECT 'loaded batch ' || g FROM generate_series(1, 50) g;

SELECT nextval('records.invoice_no') FROM generate_series(1, 42);

CREATE MATERIALIZED VIEW "Reporting".customer_totals AS
SELECT c.id, c.name, count(r.id) AS records, sum(r.amount) AS total
FROM records.customer c LEFT JOIN records.record r ON r.customer_id = c.id
GROUP BY c.id, c.name;
