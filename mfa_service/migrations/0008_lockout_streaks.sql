-- Lockouts that keep counting (issue 17). mfa_users.failed_attempts now counts a user's
-- consecutive failures until a success or an admin reset; an ended lockout no longer
-- restarts it. This is the lockout rule every statement that counts a failure calls
-- (mfa_service/domain/lockout.py states it, and tests/test_lockout.py holds the two to
-- each other): the failure that brings the count to a multiple of max_failed_attempts
-- starts the streak's k-th lockout (k = failures / max_failed_attempts), lasting
-- base × 2^(k-1) and at most 24 h; any other failure starts none (NULL). The result
-- holds seconds only, so adding it to a timestamptz never depends on the time zone.
CREATE FUNCTION mfa_lockout_duration(failures integer, max_failed_attempts integer,
                                     base interval)
RETURNS interval
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN failures > 0 AND max_failed_attempts > 0 AND failures % max_failed_attempts = 0
        THEN make_interval(secs => LEAST(
            extract(epoch FROM base)::double precision
                * power(2::double precision, LEAST(failures / max_failed_attempts - 1, 20)),
            86400))
    END
$$;
