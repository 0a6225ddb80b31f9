/** Injection token under which the composing application provides its Bus driver. */
export const BUS = 'cdp:bus';
