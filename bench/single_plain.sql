INSERT INTO plain (payload, n) VALUES ('benchmark row', 42);
