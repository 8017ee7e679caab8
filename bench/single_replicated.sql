INSERT INTO replicated (payload, n) VALUES ('benchmark row', 42);
