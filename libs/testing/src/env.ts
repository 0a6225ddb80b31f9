/** Set by the integration tier's global setup: a superuser URL of the server every test file shares. */
export const ADMIN_URL_VARIABLE = 'CDP_TEST_ADMIN_URL';
/** Set by whoever runs the tests to use an existing server instead of starting an embedded one. */
export const EXTERNAL_URL_VARIABLE = 'CDP_TEST_DATABASE_URL';
